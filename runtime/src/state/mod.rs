//! The state store on sled: consumer offsets, per-plugin key-value state, cursors and
//! metadata (edge id, format version).
//!
//! The log (`crate::log`) is the source of truth; this store only remembers how far each
//! consumer got and what plugins derived from what they read. Everything here can be rebuilt by
//! re-reading the log from an older offset, and the design leans on that: losing sled's newest
//! writes is safe as long as a consumer's offset and its state roll back *together*.
//!
//! # On-disk layout (format version 1)
//!
//! One sled database in its own directory (`<data dir>/state/`), sled's default tree unused,
//! three named trees. A *name* (consumer or namespace) is encoded as a 2-byte big-endian length
//! followed by its UTF-8 bytes, so a prefix scan of one name never sees another name's entries.
//!
//! | tree      | key                                   | value                          |
//! |-----------|---------------------------------------|--------------------------------|
//! | `offsets` | name(consumer) ++ topic (UTF-8)       | next offset to read, `u64` BE  |
//! | `state`   | name(namespace) ++ key bytes          | value bytes, as given          |
//! | `meta`    | `format_version`                      | `u32` BE (currently 1)         |
//! | `meta`    | `edge_id`                             | UTF-8                          |
//!
//! **Cursors** of the forwarder are consumer offsets: the forwarder commits as consumer
//! `forward:<destination>` with the next offset to send per topic (a [`Commit`] without ops).
//! There is no separate cursor tree; one mechanism, one set of guarantees.
//!
//! **Versions.** `open` writes [`FORMAT_VERSION`] into a new store and refuses to open a store
//! whose version is newer ([`StateError::NewerFormat`]), so a downgraded binary never
//! misreads state written by a newer one. A future version that changes the layout migrates
//! old stores on open and then bumps the stored version.
//!
//! # What is durable when
//!
//! - **[`StateStore::commit`] returns** once the change is in sled's in-memory log buffer:
//!   visible to every reader at once, *not yet durable*. All offsets and state ops of one
//!   commit are one sled transaction over the `offsets` and `state` trees; sled seals the
//!   transaction's writes as one batch in its log, recovery replays a batch whole or not at
//!   all, and it stops at the first missing or torn write. After a crash the store therefore
//!   holds the result of some *prefix* of the commits, each fully applied or not at all.
//! - **Every [`FLUSH_EVERY_MS`] (500 ms)** sled's flusher thread writes its buffers to the `db`
//!   file and then fsyncs it. A `kill -9` loses at most the commits still in process memory
//!   (the last flush interval); a power loss can also lose what was written but not yet
//!   fsynced.
//! - **[`StateStore::sync`]** makes everything committed before it durable against power
//!   loss: `Db::flush()` (on Linux sled writes with `sync_file_range`, which does not persist
//!   file metadata such as the grown size and does not flush the device cache), then an
//!   explicit `fsync` of every file in the directory (`db`, `conf`, `blobs/*`, `snap.*`) and
//!   of the directories themselves.
//! - **The edge id** is synced before [`StateStore::edge_id`] first returns it, and a stored id
//!   is synced once more per process before it is handed out, so an id anyone has seen never
//!   changes or regresses. The format version is synced when a store is created.
//! - **Retention:** the store is a [`RetentionGuard`]; before the log deletes segments it calls
//!   `sync()`. Without it, a consumer could have read and committed past a segment, the
//!   segment be deleted, and a crash roll the consumer's offset back into the deleted range:
//!   the records would be lost to it. With it, no offset that pointed past a deleted segment
//!   can regress behind the log start. Consumers do not *block* retention in this version
//!   (`protected_from` is `None`); the forwarder's eviction policy adds that.
//! - **[`StateStore::reset`]** is atomic and synced before it returns (an operator's reset
//!   must not come back after a crash).
//!
//! **Why a rollback is safe.** A crash rolls a consumer's offset and the state it derived back
//! to the same earlier commit. The inputs after that offset are still in the durable log, so
//! the consumer re-reads and re-applies them to the old state: no input is ever applied to
//! state twice, and none is lost. Records a plugin *emitted* into other topics are in the log,
//! not here, so re-processing may emit them again: state is exactly-once per input, emitted
//! records are at-least-once. A consumer whose offset fell below the log start (retention
//! removed records it never read) resumes at the start and says so ([`StateStore::resume`]).
//!
//! # State usage
//!
//! [`StateStore::usage`] tells how much state a namespace holds (key plus value bytes over its
//! keys, and its keys), which plugin state quotas are checked against. It is kept in memory
//! only: counted by one scan of the namespace when first asked, then kept exact by every
//! commit (a sled put or delete hands back the value it replaced). A reopened store and a
//! reset namespace are counted again.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod ballast;
mod files;
mod identity;
mod keys;
mod open_box;

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::kernel::{lock, read_lock, write_lock};
use crate::log::RetentionGuard;
use crate::metrics::{Counter, Gauge};

pub use identity::{identity_path, positions_path, StoredIdentity, IDENTITY_FILE, POSITIONS_FILE};
pub use keys::MAX_NAME_BYTES;
pub use open_box::{open_box, BoxOptions, OpenedBox, Rebuilt};

/// The on-disk format version this binary writes and understands.
pub const FORMAT_VERSION: u32 = 1;
/// How often sled's flusher thread writes and fsyncs its buffers, in milliseconds.
pub const FLUSH_EVERY_MS: u64 = 500;
/// sled's page cache size, in bytes (sled's default of 1 GiB is too much for a store box).
pub const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// The longest key of a plugin's state, in bytes.
pub const MAX_STATE_KEY_BYTES: usize = 4 * 1024;
/// The largest value of a plugin's state, in bytes.
pub const MAX_STATE_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// The longest explicit edge id, in bytes.
pub const MAX_EDGE_ID_BYTES: usize = 128;

const TREE_OFFSETS: &str = "offsets";
const TREE_STATE: &str = "state";
const TREE_META: &str = "meta";
const META_FORMAT_VERSION: &str = "format_version";
const META_EDGE_ID: &str = "edge_id";
const META_STORE_ID: &str = "store_id";

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
    /// A consumer, namespace or edge id that cannot be stored.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    /// The store was written by a newer Outpost.
    #[error(
        "the state store at {dir} has format version {found}, but this Outpost understands \
         versions up to {supported}; run the newer Outpost that wrote it, or move the \
         directory away to start with empty state"
    )]
    NewerFormat {
        dir: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The box's store or identity is damaged, missing or ambiguous (see [`open_box`]).
    #[error(transparent)]
    Identity(#[from] Box<IdentityError>),
}

/// Why [`open_box`] refuses to start a box (boxed in [`StateError::Identity`]).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The box's state store is damaged or gone while the box has a past (see [`open_box`]).
    #[error(
        "the state store file {file} is damaged or missing ({detail}); Outpost refuses to \
         start rather than replace the box's consumer offsets and plugin state silently. \
         Start once with `outpost run --rebuild-state` (or `edge.rebuild_state = true`) to \
         move it aside and rebuild it: the edge id is kept from {identity} and consumers \
         resume from {positions}"
    )]
    Damaged {
        file: PathBuf,
        detail: String,
        identity: PathBuf,
        positions: PathBuf,
    },
    /// The two copies of the identity name different edge ids.
    #[error(
        "the edge id in the state store {store_file} ({store_edge_id:?}) differs from the one in \
         {identity_file} ({file_edge_id:?}); Outpost refuses to start with an ambiguous \
         identity. Set the right one explicitly (`edge.edge_id` or OUTPOST_EDGE_ID), which \
         rewrites both copies, or remove the wrong copy"
    )]
    IdentityConflict {
        store_file: PathBuf,
        store_edge_id: String,
        identity_file: PathBuf,
        file_edge_id: String,
    },
    /// No copy of the identity survived, but the box has data.
    #[error(
        "no copy of this box's edge id survived (neither the state store {store_file} nor \
         {identity_file} holds one), but the log at {log_dir} has data; a new edge id would \
         make the cloud see the box's records again as another box's. Set the old edge id \
         explicitly (`edge.edge_id` or OUTPOST_EDGE_ID; the cloud knows it from the \
         `outpost-edge` header) and start with `--rebuild-state`"
    )]
    IdentityLost {
        store_file: PathBuf,
        identity_file: PathBuf,
        log_dir: PathBuf,
    },
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

/// One (key, value) of a namespace's state, as [`StateStore::state_iter`] yields it.
pub type StateEntry = (Vec<u8>, Vec<u8>);

/// How much state a namespace holds: the sum over its keys of key bytes plus value bytes (the
/// namespace's own keys, without the store's prefix), and the number of keys. What a plugin's
/// state quota counts (`sdk/ABI.md`, section 10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateUsage {
    /// Key bytes plus value bytes.
    pub bytes: u64,
    /// Keys.
    pub keys: u64,
}

impl StateUsage {
    /// The usage of one entry (`None`: no value, nothing).
    fn entry(key_len: usize, value_len: Option<usize>) -> StateUsage {
        match value_len {
            Some(len) => StateUsage {
                bytes: key_len as u64 + len as u64,
                keys: 1,
            },
            None => StateUsage::default(),
        }
    }

    fn add(self, other: StateUsage) -> StateUsage {
        StateUsage {
            bytes: self.bytes.saturating_add(other.bytes),
            keys: self.keys.saturating_add(other.keys),
        }
    }

    fn sub(self, other: StateUsage) -> StateUsage {
        StateUsage {
            bytes: self.bytes.saturating_sub(other.bytes),
            keys: self.keys.saturating_sub(other.keys),
        }
    }
}

/// The known usage of one namespace (`None` until a scan counted it); its lock is held across
/// a commit to the namespace, so a scan never counts a commit twice.
type UsageSlot = Arc<Mutex<Option<StateUsage>>>;

/// Where a consumer resumes on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub offset: u64,
    /// Set to the stored offset (0 when there was none) when it was below the log start and
    /// the consumer skips ahead.
    pub skipped_from: Option<u64>,
}

/// The state store. Cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

/// The open sled database and its trees; replaced whole when the store reopens after an I/O
/// failure (see [`StateStore::sync`]).
struct Trees {
    db: sled::Db,
    offsets: sled::Tree,
    state: sled::Tree,
    meta: sled::Tree,
}

struct Inner {
    dir: PathBuf,
    /// `None` only while a reopen is under way or after one failed.
    trees: RwLock<Option<Arc<Trees>>>,
    /// Set when sled failed to write: sled then refuses every later write until it is opened
    /// again, so the store reopens (at most every [`REOPEN_EVERY`]) before its next use.
    broken: AtomicBool,
    /// When the last reopen was tried.
    last_reopen: Mutex<Option<Instant>>,
    /// Reopens that succeeded; see [`StateStore::generation`].
    generation: AtomicU64,
    /// Commits and usage scans take it shared, `reset` exclusively, so a reset's scan and
    /// delete see no concurrent commit and a usage scan never sees half a reset.
    reset_lock: RwLock<()>,
    /// Serialises edge id reads and changes.
    edge_lock: Mutex<()>,
    /// Whether this process has synced the stored edge id.
    edge_synced: AtomicBool,
    /// Completed `sync()` calls on this store.
    syncs: AtomicU64,
    /// Where `sync()` writes the positions checkpoint (set for a box's store, see
    /// [`open_box`]).
    positions: Option<PathBuf>,
    /// Per namespace, its usage: counted by a scan on first ask ([`StateStore::usage`]), then
    /// kept by every commit (sled hands back the value a put or delete replaced). Cleared when
    /// the store reopens (it may come back older) and for a namespace that is reset.
    usage: Mutex<HashMap<String, UsageSlot>>,
    metrics: Metrics,
}

// sled's own Debug prints every tree's contents; print where the store lives instead.
impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Metrics {
    commits: Counter,
    commit_failures: Counter,
    ops: Counter,
    syncs: Counter,
    sync_failures: Counter,
    sync_seconds: Gauge,
    resume_skips: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let r = crate::metrics::global();
        Metrics {
            commits: r.counter(
                "outpost_state_commits_total",
                "State store commits (offsets and state ops applied atomically).",
                &[],
            ),
            commit_failures: r.counter(
                "outpost_state_commit_failures_total",
                "State store commits that failed and applied nothing.",
                &[],
            ),
            ops: r.counter(
                "outpost_state_ops_total",
                "Plugin state puts and deletes committed.",
                &[],
            ),
            syncs: r.counter(
                "outpost_state_syncs_total",
                "Full syncs of the state store (sled flush plus fsync of its files).",
                &[],
            ),
            sync_failures: r.counter(
                "outpost_state_sync_failures_total",
                "State store syncs that failed.",
                &[],
            ),
            sync_seconds: r.gauge(
                "outpost_state_last_sync_seconds",
                "Duration of the last state store sync, in seconds.",
                &[],
            ),
            resume_skips: r.counter(
                "outpost_state_resume_skips_total",
                "Consumers that resumed at the log start because retention removed records \
                 they had not read.",
                &[],
            ),
        }
    }
}

/// How long [`StateStore::open`] waits for a store whose files are locked.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether sled failed to open because another handle holds the store's file lock.
fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// Maps a sled error at open to one that names the directory.
fn open_error(dir: &Path, e: sled::Error) -> StateError {
    match e {
        sled::Error::Io(source) => {
            let hint = if is_lock_held(&source) {
                "is another Outpost using this data dir?"
            } else if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                "the file system is full: free some space"
            } else {
                "check the directory's permissions and file system"
            };
            StateError::Io {
                context: format!("opening the state store at {} ({hint})", dir.display()),
                source,
            }
        }
        other => StateError::Sled(other),
    }
}

/// Checks one op against the size limits (inside the transaction, so a bad op aborts it all).
fn check_op(namespace: &str, op: &StateOp) -> Result<(), StateError> {
    let (key, value_len) = match op {
        StateOp::Put { key, value } => (key, value.len()),
        StateOp::Delete { key } => (key, 0),
    };
    if key.len() > MAX_STATE_KEY_BYTES {
        return Err(StateError::Aborted(format!(
            "a state key of namespace {namespace:?} is {} bytes, over the limit of \
             {MAX_STATE_KEY_BYTES}; nothing of the commit was applied",
            key.len()
        )));
    }
    if value_len > MAX_STATE_VALUE_BYTES {
        return Err(StateError::Aborted(format!(
            "the state value of key {:?} in namespace {namespace:?} is {value_len} bytes, over \
             the limit of {MAX_STATE_VALUE_BYTES}; nothing of the commit was applied",
            String::from_utf8_lossy(key)
        )));
    }
    Ok(())
}

impl Trees {
    /// Opens sled under `dir`, waiting up to [`LOCK_WAIT`] for a lock another handle holds.
    fn open(dir: &Path) -> Result<Trees, StateError> {
        let started = std::time::Instant::now();
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .flush_every_ms(Some(FLUSH_EVERY_MS))
                .cache_capacity(CACHE_CAPACITY_BYTES)
                .open();
            match opened {
                Err(sled::Error::Io(e)) if is_lock_held(&e) && started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other.map_err(|e| open_error(dir, e))?,
            }
        };
        Ok(Trees {
            offsets: db.open_tree(TREE_OFFSETS)?,
            state: db.open_tree(TREE_STATE)?,
            meta: db.open_tree(TREE_META)?,
            db,
        })
    }
}

/// How often a store whose writes failed tries to reopen.
pub const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a failure means sled's files could not be written (full disk, I/O error): sled
/// refuses every write after one, so the store must reopen.
fn is_io_failure(e: &StateError) -> bool {
    matches!(
        e,
        StateError::Sled(sled::Error::Io(_)) | StateError::Io { .. }
    )
}

impl StateStore {
    /// The current trees, reopening the database first when a write failed before.
    fn trees(&self) -> Result<Arc<Trees>, StateError> {
        if self.inner.broken.load(Ordering::SeqCst) {
            self.reopen();
        }
        read_lock(&self.inner.trees)
            .clone()
            .ok_or_else(|| StateError::Io {
                context: format!(
                    "the state store at {} is closed after a failed write and could not be \
                     opened again yet",
                    self.inner.dir.display()
                ),
                source: std::io::Error::other("state store unavailable"),
            })
    }

    /// Notes a failure of sled; an I/O failure makes the next use reopen the database.
    fn note_failure(&self, e: &StateError) {
        if is_io_failure(e) && !self.inner.broken.swap(true, Ordering::SeqCst) {
            tracing::error!(
                dir = %self.inner.dir.display(),
                error = %e,
                "The state store failed to write; it reopens once writes can succeed again."
            );
        }
    }

    /// Closes and reopens sled (at most every [`REOPEN_EVERY`]). sled recovers its last
    /// durable state: commits that were only in memory are gone, offsets and the state
    /// derived with them together (see "Why a rollback is safe"); consumers read their
    /// offsets again when [`StateStore::generation`] changes.
    fn reopen(&self) {
        let inner = &self.inner;
        {
            let mut last = lock(&inner.last_reopen);
            if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut trees = write_lock(&inner.trees);
        if !inner.broken.load(Ordering::SeqCst) {
            return;
        }
        // sled's file lock is released when the last handle of the old database is gone.
        drop(trees.take());
        match Trees::open(&inner.dir) {
            Ok(opened) => {
                *trees = Some(Arc::new(opened));
                // The reopened store holds its last durable commits: count usage again.
                lock(&inner.usage).clear();
                inner.broken.store(false, Ordering::SeqCst);
                inner.generation.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(
                    dir = %inner.dir.display(),
                    "The state store is open again after a failed write; commits not yet \
                     durable before the failure are redone from the log."
                );
            }
            Err(e) => tracing::warn!(
                dir = %inner.dir.display(),
                error = %e,
                "Reopening the state store failed; it is tried again."
            ),
        }
    }

    /// How many times the store reopened after a failed write. A consumer that caches its
    /// offsets or state reads them again when this changes.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// Opens (or creates) the store under `dir` (its own sub-directory of the data dir).
    ///
    /// sled locks the store's files while any handle or its background I/O threads still
    /// use them: those of an Outpost that is stopping (in this process, or one still
    /// exiting) let go within moments, so a locked store is retried for up to
    /// [`LOCK_WAIT`] before the error says another Outpost is using the data dir.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        let store = StateStore::open_unchecked(dir, None)?;
        if !store.has_format()? {
            store.init_format()?;
        }
        Ok(store)
    }

    /// Opens sled under `dir` and checks a stored format version, but writes nothing: a store
    /// without a format version is either new or lost its contents, and the caller decides
    /// ([`StateStore::open`] initialises it, [`open_box`] first asks the box's other copies).
    fn open_unchecked(dir: &Path, positions: Option<PathBuf>) -> Result<StateStore, StateError> {
        Ok(StateStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                trees: RwLock::new(Some(Arc::new(Trees::open(dir)?))),
                broken: AtomicBool::new(false),
                last_reopen: Mutex::new(None),
                generation: AtomicU64::new(0),
                reset_lock: RwLock::new(()),
                edge_lock: Mutex::new(()),
                edge_synced: AtomicBool::new(false),
                syncs: AtomicU64::new(0),
                positions,
                usage: Mutex::new(HashMap::new()),
                metrics: Metrics::new(),
            }),
        })
    }

    /// Whether the store has a format version (refusing newer and invalid ones).
    fn has_format(&self) -> Result<bool, StateError> {
        let inner = &self.inner;
        let Some(raw) = self.trees()?.meta.get(META_FORMAT_VERSION)? else {
            return Ok(false);
        };
        let found = keys::decode_u32(META_FORMAT_VERSION, &raw)?;
        if found > FORMAT_VERSION {
            return Err(StateError::NewerFormat {
                dir: inner.dir.clone(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        if found == 0 {
            return Err(StateError::Corrupt {
                key: format!("meta/{META_FORMAT_VERSION}"),
                detail: "format version 0 does not exist".to_string(),
            });
        }
        tracing::debug!(
            dir = %inner.dir.display(),
            format_version = found,
            "Opened the state store."
        );
        Ok(true)
    }

    /// Whether the store holds no offsets and no plugin state.
    fn is_empty(&self) -> bool {
        self.trees()
            .map_or(true, |t| t.offsets.is_empty() && t.state.is_empty())
    }

    /// Writes (and syncs) the format version into a store that has none.
    fn init_format(&self) -> Result<(), StateError> {
        let inner = &self.inner;
        if !self.is_empty() {
            // Every store this code writes gets a version first; entries without one
            // can only come from a crash between creation and the first sync.
            tracing::warn!(
                dir = %inner.dir.display(),
                "The state store has entries but no format version; assuming version 1."
            );
        }
        self.trees()?
            .meta
            .insert(META_FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
        self.sync()?;
        // Make the new directory's own entry durable in the data dir.
        if let Some(parent) = inner.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            files::fsync_dir(parent)?;
        }
        tracing::info!(
            dir = %inner.dir.display(),
            format_version = FORMAT_VERSION,
            "Created a new state store."
        );
        Ok(())
    }

    /// The identity this store holds (edge id, and the store id when one was stored), without
    /// generating anything.
    fn stored_identity(&self) -> Result<Option<StoredIdentity>, StateError> {
        let trees = self.trees()?;
        let meta = &trees.meta;
        let text = |key: &str| -> Result<Option<String>, StateError> {
            match meta.get(key)? {
                Some(raw) => {
                    String::from_utf8(raw.to_vec())
                        .map(Some)
                        .map_err(|_| StateError::Corrupt {
                            key: format!("meta/{key}"),
                            detail: "value is not UTF-8".to_string(),
                        })
                }
                None => Ok(None),
            }
        };
        let Some(edge_id) = text(META_EDGE_ID)? else {
            return Ok(None);
        };
        Ok(Some(StoredIdentity {
            edge_id,
            store_id: text(META_STORE_ID)?.unwrap_or_default(),
        }))
    }

    /// Stores the identity in the `meta` tree and syncs it.
    fn store_identity(&self, identity: &StoredIdentity) -> Result<(), StateError> {
        check_edge_id(&identity.edge_id)?;
        let inner = &self.inner;
        let _guard = inner
            .edge_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let trees = self.trees()?;
        trees
            .meta
            .insert(META_EDGE_ID, identity.edge_id.as_bytes())?;
        trees
            .meta
            .insert(META_STORE_ID, identity.store_id.as_bytes())?;
        self.sync()?;
        inner.edge_synced.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// This box's edge id: generated once (or set from `OUTPOST_EDGE_ID`) and fsynced; it never
    /// changes afterwards unless an explicit id is given.
    ///
    /// A generated id is `edge-` followed by 12 hex digits from `/dev/urandom`. An explicit id
    /// that differs from the stored one replaces it (and is synced); it must be non-empty, at
    /// most [`MAX_EDGE_ID_BYTES`] long and free of whitespace and control characters.
    pub fn edge_id(&self, explicit: Option<&str>) -> Result<String, StateError> {
        let inner = &self.inner;
        let _guard = inner
            .edge_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let trees = self.trees()?;
        let stored = match trees.meta.get(META_EDGE_ID)? {
            Some(raw) => {
                Some(
                    String::from_utf8(raw.to_vec()).map_err(|_| StateError::Corrupt {
                        key: format!("meta/{META_EDGE_ID}"),
                        detail: "edge id is not UTF-8".to_string(),
                    })?,
                )
            }
            None => None,
        };
        if let Some(explicit) = explicit {
            if stored.as_deref() != Some(explicit) {
                check_edge_id(explicit)?;
                trees.meta.insert(META_EDGE_ID, explicit.as_bytes())?;
                self.sync()?;
                inner.edge_synced.store(true, Ordering::SeqCst);
                tracing::info!(
                    edge_id = explicit,
                    previous = stored.as_deref().unwrap_or("none"),
                    "The explicit edge id (OUTPOST_EDGE_ID) replaces the stored one and is now durable."
                );
                return Ok(explicit.to_string());
            }
        }
        if let Some(stored) = stored {
            // The process that stored it may have crashed before its sync finished; make sure
            // once per process that what we hand out is durable.
            if !inner.edge_synced.load(Ordering::SeqCst) {
                self.sync()?;
                inner.edge_synced.store(true, Ordering::SeqCst);
            }
            return Ok(stored);
        }
        let id = files::random_edge_id()?;
        trees.meta.insert(META_EDGE_ID, id.as_bytes())?;
        self.sync()?;
        inner.edge_synced.store(true, Ordering::SeqCst);
        tracing::info!(edge_id = %id, "Generated this box's edge id and made it durable.");
        Ok(id)
    }

    /// The stored offset of `consumer` on `topic`.
    pub fn offset(&self, consumer: &str, topic: &str) -> Result<Option<u64>, StateError> {
        keys::check_name("consumer", consumer)?;
        match self
            .trees()?
            .offsets
            .get(keys::offset_key(consumer, topic))?
        {
            Some(raw) => {
                keys::decode_offset(|| format!("{TREE_OFFSETS}/{consumer}/{topic}"), &raw).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Every stored (topic, next offset) of `consumer`, sorted by topic.
    pub fn offsets(&self, consumer: &str) -> Result<Vec<(String, u64)>, StateError> {
        keys::check_name("consumer", consumer)?;
        let mut out = Vec::new();
        for entry in self
            .trees()?
            .offsets
            .scan_prefix(keys::consumer_prefix(consumer))
        {
            let (key, value) = entry?;
            let (_, topic) = keys::split_key(TREE_OFFSETS, &key)?;
            let topic = String::from_utf8(topic.to_vec()).map_err(|_| StateError::Corrupt {
                key: format!(
                    "{TREE_OFFSETS}/{consumer}/{}",
                    String::from_utf8_lossy(topic)
                ),
                detail: "topic is not UTF-8".to_string(),
            })?;
            let offset =
                keys::decode_offset(|| format!("{TREE_OFFSETS}/{consumer}/{topic}"), &value)?;
            out.push((topic, offset));
        }
        Ok(out)
    }

    /// Every stored (consumer, topic, next offset), sorted by consumer name length, then
    /// name, then topic (the key order). For status pages and lag reports.
    pub fn all_offsets(&self) -> Result<Vec<(String, String, u64)>, StateError> {
        let mut out = Vec::new();
        for entry in self.trees()?.offsets.iter() {
            let (key, value) = entry?;
            let (consumer, topic) = keys::split_key(TREE_OFFSETS, &key)?;
            let topic = String::from_utf8(topic.to_vec()).map_err(|_| StateError::Corrupt {
                key: format!(
                    "{TREE_OFFSETS}/{consumer}/{}",
                    String::from_utf8_lossy(topic)
                ),
                detail: "topic is not UTF-8".to_string(),
            })?;
            let offset =
                keys::decode_offset(|| format!("{TREE_OFFSETS}/{consumer}/{topic}"), &value)?;
            out.push((consumer.to_string(), topic, offset));
        }
        Ok(out)
    }

    /// Where `consumer` resumes on `topic` given the log's current start offset; logs a warning
    /// when it has to skip ahead.
    ///
    /// The stored offset (0 when there is none) is used as is unless it is below `log_start`:
    /// then retention removed records the consumer never read, and it resumes at `log_start`
    /// with `skipped_from` set to the stored offset. Nothing is written; the consumer's next
    /// commit moves its offset.
    pub fn resume(
        &self,
        consumer: &str,
        topic: &str,
        log_start: u64,
    ) -> Result<Resume, StateError> {
        let stored = self.offset(consumer, topic)?;
        let offset = stored.unwrap_or(0);
        if offset >= log_start {
            return Ok(Resume {
                offset,
                skipped_from: None,
            });
        }
        self.inner.metrics.resume_skips.inc();
        tracing::warn!(
            consumer,
            topic,
            from_offset = offset,
            to_offset = log_start,
            skipped_records = log_start - offset,
            had_stored_offset = stored.is_some(),
            "Consumer resumes at the log start; records were removed by retention before it read them."
        );
        Ok(Resume {
            offset: log_start,
            skipped_from: Some(offset),
        })
    }

    /// Applies offsets and state ops in one atomic step.
    ///
    /// Either everything is applied or nothing: a state key over [`MAX_STATE_KEY_BYTES`] or
    /// value over [`MAX_STATE_VALUE_BYTES`] aborts the whole commit with
    /// [`StateError::Aborted`]. Not durable on return; see the module doc.
    pub fn commit(&self, commit: &Commit) -> Result<(), StateError> {
        let result = self.commit_inner(commit);
        match &result {
            Ok(()) => {
                self.inner.metrics.commits.inc();
                self.inner.metrics.ops.add(commit.ops.len() as u64);
            }
            Err(e) => {
                self.note_failure(e);
                self.inner.metrics.commit_failures.inc();
                tracing::debug!(
                    consumer = %commit.consumer,
                    error = %e,
                    "A state commit failed and applied nothing."
                );
            }
        }
        result
    }

    fn commit_inner(&self, commit: &Commit) -> Result<(), StateError> {
        if !commit.offsets.is_empty() {
            keys::check_name("consumer", &commit.consumer)?;
        }
        if !commit.ops.is_empty() {
            keys::check_name("namespace", &commit.namespace)?;
        }
        if commit.offsets.is_empty() && commit.ops.is_empty() {
            return Ok(());
        }
        let offsets: Vec<(Vec<u8>, [u8; 8])> = commit
            .offsets
            .iter()
            .map(|(topic, offset)| {
                (
                    keys::offset_key(&commit.consumer, topic),
                    keys::encode_offset(*offset),
                )
            })
            .collect();
        let namespace = commit.namespace.as_str();
        let inner = &self.inner;
        let _shared = read_lock(&inner.reset_lock);
        // The namespace's usage is updated under its lock, with what the transaction replaced.
        let slot = (!commit.ops.is_empty()).then(|| self.usage_slot(namespace));
        let mut known = slot.as_deref().map(lock);
        let grown = Cell::new(StateUsage::default());
        let shrunk = Cell::new(StateUsage::default());
        let trees = self.trees()?;
        let result = (&trees.offsets, &trees.state).transaction(|(offsets_tx, state_tx)| {
            // sled may run the closure again after a conflict: count from zero every time.
            grown.set(StateUsage::default());
            shrunk.set(StateUsage::default());
            for (key, value) in &offsets {
                offsets_tx.insert(key.as_slice(), &value[..])?;
            }
            for op in &commit.ops {
                check_op(namespace, op).map_err(ConflictableTransactionError::Abort)?;
                let (key, old, new) = match op {
                    StateOp::Put { key, value } => {
                        let old =
                            state_tx.insert(keys::state_key(namespace, key), value.as_slice())?;
                        (key, old, Some(value.len()))
                    }
                    StateOp::Delete { key } => {
                        (key, state_tx.remove(keys::state_key(namespace, key))?, None)
                    }
                };
                grown.set(grown.get().add(StateUsage::entry(key.len(), new)));
                let old = StateUsage::entry(key.len(), old.as_ref().map(|v| v.len()));
                shrunk.set(shrunk.get().add(old));
            }
            Ok(())
        });
        result.map_err(from_transaction)?;
        if let Some(usage) = known.as_deref_mut().and_then(Option::as_mut) {
            *usage = usage.add(grown.get()).sub(shrunk.get());
        }
        Ok(())
    }

    /// The usage slot of `namespace`.
    fn usage_slot(&self, namespace: &str) -> UsageSlot {
        let mut slots = lock(&self.inner.usage);
        match slots.get(namespace) {
            Some(slot) => Arc::clone(slot),
            None => {
                let slot = UsageSlot::default();
                slots.insert(namespace.to_string(), Arc::clone(&slot));
                slot
            }
        }
    }

    /// How much state `namespace` holds (key plus value bytes over its keys, and its keys).
    ///
    /// The first call for a namespace scans its entries; later calls return what commits kept
    /// up to date, without touching sled. After the store reopened, or the namespace was
    /// reset, the next call scans again.
    pub fn usage(&self, namespace: &str) -> Result<StateUsage, StateError> {
        keys::check_name("namespace", namespace)?;
        let _shared = read_lock(&self.inner.reset_lock);
        let slot = self.usage_slot(namespace);
        let mut known = lock(&slot);
        if let Some(usage) = *known {
            return Ok(usage);
        }
        let started = Instant::now();
        let counted = self.scan_usage(namespace);
        if let Err(e) = &counted {
            self.note_failure(e);
        }
        let usage = counted?;
        tracing::debug!(
            namespace,
            bytes = usage.bytes,
            keys = usage.keys,
            seconds = started.elapsed().as_secs_f64(),
            "Counted a namespace's state usage."
        );
        *known = Some(usage);
        Ok(usage)
    }

    /// Counts a namespace's usage from its entries.
    fn scan_usage(&self, namespace: &str) -> Result<StateUsage, StateError> {
        let prefix = keys::namespace_prefix(namespace);
        let mut usage = StateUsage::default();
        for entry in self.trees()?.state.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let key_len = key.len().saturating_sub(prefix.len());
            usage = usage.add(StateUsage::entry(key_len, Some(value.len())));
        }
        Ok(usage)
    }

    /// Reads one key of a namespace's state.
    pub fn get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        keys::check_name("namespace", namespace)?;
        let read = self
            .trees()?
            .state
            .get(keys::state_key(namespace, key))
            .map_err(StateError::from);
        if let Err(e) = &read {
            self.note_failure(e);
        }
        Ok(read?.map(|v| v.to_vec()))
    }

    /// Every (key, value) of a namespace's state in key order, read lazily.
    pub fn state_iter(
        &self,
        namespace: &str,
    ) -> Result<impl Iterator<Item = Result<StateEntry, StateError>>, StateError> {
        keys::check_name("namespace", namespace)?;
        let prefix_len = keys::namespace_prefix(namespace).len();
        Ok(self
            .trees()?
            .state
            .scan_prefix(keys::namespace_prefix(namespace))
            .map(move |entry| {
                let (key, value) = entry?;
                let user_key = key.get(prefix_len..).unwrap_or_default().to_vec();
                Ok((user_key, value.to_vec()))
            }))
    }

    /// Deletes all state and offsets of a namespace/consumer (plugin upgrade with `--reset`).
    ///
    /// One transaction removes the namespace's keys and the consumer's offsets together; no
    /// commit runs between the scan and the delete. Synced before it returns.
    pub fn reset(&self, namespace: &str, consumer: &str) -> Result<(), StateError> {
        keys::check_name("namespace", namespace)?;
        keys::check_name("consumer", consumer)?;
        let inner = &self.inner;
        {
            let _exclusive = write_lock(&inner.reset_lock);
            let trees = self.trees()?;
            let state_keys = trees
                .state
                .scan_prefix(keys::namespace_prefix(namespace))
                .keys()
                .collect::<Result<Vec<_>, _>>()?;
            let offset_keys = trees
                .offsets
                .scan_prefix(keys::consumer_prefix(consumer))
                .keys()
                .collect::<Result<Vec<_>, _>>()?;
            let result = (&trees.offsets, &trees.state).transaction(|(offsets_tx, state_tx)| {
                for key in &offset_keys {
                    offsets_tx.remove(key.clone())?;
                }
                for key in &state_keys {
                    state_tx.remove(key.clone())?;
                }
                Ok::<(), ConflictableTransactionError<StateError>>(())
            });
            result.map_err(from_transaction)?;
            // Counted again (an empty namespace) when next asked.
            lock(&inner.usage).remove(namespace);
            tracing::info!(
                namespace,
                consumer,
                state_keys = state_keys.len(),
                offsets = offset_keys.len(),
                "Reset a namespace's state and its consumer's offsets."
            );
        }
        self.sync()
    }

    /// Makes everything written so far durable: sled flush, then fsync of its files.
    pub fn sync(&self) -> Result<(), StateError> {
        let inner = &self.inner;
        let started = Instant::now();
        let result = self
            .trees()
            .and_then(|t| t.db.flush().map_err(StateError::from))
            .and_then(|_| files::fsync_tree(&inner.dir));
        match result {
            Ok(files) => {
                self.write_positions();
                inner.syncs.fetch_add(1, Ordering::SeqCst);
                inner.metrics.syncs.inc();
                let seconds = started.elapsed().as_secs_f64();
                inner.metrics.sync_seconds.set(seconds);
                tracing::trace!(files, seconds, "Synced the state store.");
                Ok(())
            }
            Err(e) => {
                self.note_failure(&e);
                inner.metrics.sync_failures.inc();
                tracing::error!(
                    dir = %inner.dir.display(),
                    error = %e,
                    "Syncing the state store failed."
                );
                Err(e)
            }
        }
    }

    /// Writes the positions checkpoint of a box's store (see [`open_box`]). A failure is
    /// logged, not returned: the checkpoint only helps a rebuild, and the store itself is
    /// durable.
    fn write_positions(&self) {
        let Some(path) = &self.inner.positions else {
            return;
        };
        let written = self
            .all_offsets()
            .and_then(|offsets| identity::write_positions(path, &offsets));
        if let Err(e) = written {
            tracing::warn!(
                file = %path.display(),
                error = %e,
                "Writing the consumer positions checkpoint failed; the previous one stays."
            );
        }
    }

    /// How many `sync()` calls completed on this store since it was opened.
    pub fn sync_count(&self) -> u64 {
        self.inner.syncs.load(Ordering::SeqCst)
    }
}

fn from_transaction(e: TransactionError<StateError>) -> StateError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StateError::Sled(e),
    }
}

fn check_edge_id(id: &str) -> Result<(), StateError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_EDGE_ID_BYTES {
        "it is longer than 128 bytes"
    } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it contains whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(StateError::InvalidName {
        what: "edge id (OUTPOST_EDGE_ID)",
        name: id.chars().take(80).collect(),
        reason,
    })
}

/// Retention asks the store before deleting segments: the store makes every committed offset
/// durable first, so no offset that pointed past a deleted segment can roll back into it after
/// a crash. Consumers do not hold back retention in this version (`protected_from` is `None`):
/// a consumer that falls behind the log start skips ahead and says so (see `resume`).
impl RetentionGuard for StateStore {
    fn protected_from(&self, _topic: &str) -> Option<u64> {
        None
    }

    fn before_delete(&self, topic: &str, end_offset: u64) -> Result<(), String> {
        tracing::debug!(
            topic,
            end_offset,
            "Syncing the state store before retention deletes segments."
        );
        self.sync().map_err(|e| {
            format!("state store could not be made durable before deleting segments: {e}")
        })
    }
}

#[cfg(test)]
mod tests;
