//! One topic's machinery: the append path with group commit, segment roll, the visible end
//! readers see, fetches across segments, and carrying out retention and eviction.
//!
//! Locks, always taken in this order when nested: `write` (appends, rolls) → `index` of a
//! segment → `sync` (group-commit state). `segments` (the list) is only held briefly and never
//! across I/O except by a roll or a retention deletion. No lock is held during an fsync.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::evict::GapMarker;
use super::format::{self, Take};
use super::retention::{self, Limits, SegmentInfo};
use super::segment::{self, GapFound, ReadEnd, Segment};
use super::{
    io_error, lock, read_lock, write_lock, AppendAck, AppendFailed, Fetch, FsyncPolicy, LogError,
    NamedFsync, NewRecord, Record, RetentionReport, Shared, TopicConfig, TopicStats,
};
use crate::metrics::{self, Counter, Gauge};

/// Sealed segments whose files stay open for reading at once, per topic.
const OPEN_SEALED_FILES: usize = 16;
/// Ranges a topic remembers as logged and marked in the gap topic.
const MAX_REPORTED_GAPS: usize = 4096;
/// Width of the records/s window.
const RATE_WINDOW_SECS: u64 = 5;

#[derive(Debug)]
struct TopicMetrics {
    records: Counter,
    bytes: Counter,
    fsyncs: Counter,
    corrupt: Counter,
    read_gaps: Counter,
    size: Gauge,
}

/// Per-second append counts for the records/s estimate.
#[derive(Debug)]
struct Rate {
    started: Instant,
    buckets: [(u64, u64); RATE_WINDOW_SECS as usize + 1],
}

impl Rate {
    fn add(&mut self, n: u64) {
        let sec = self.started.elapsed().as_secs();
        let slot = &mut self.buckets[(sec % self.buckets.len() as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += n;
    }

    fn per_sec(&self) -> f64 {
        let elapsed = self.started.elapsed();
        let now = elapsed.as_secs();
        let count: u64 = self
            .buckets
            .iter()
            .filter(|(sec, _)| *sec <= now && now - *sec < RATE_WINDOW_SECS)
            .map(|(_, n)| n)
            .sum();
        let span = elapsed
            .as_secs_f64()
            .min((RATE_WINDOW_SECS - 1) as f64 + elapsed.subsec_nanos() as f64 / 1e9);
        if span <= 0.0 {
            0.0
        } else {
            count as f64 / span.max(0.001)
        }
    }
}

#[derive(Debug)]
struct WriteState {
    active: Arc<Segment>,
    file: Arc<File>,
    /// Offset the next record gets (the written end, pending batches included).
    next_offset: u64,
    /// Bytes of the active segment, pending batches included.
    len: u64,
    /// Bytes of the active segment in the file (`len` minus `pending`).
    file_len: u64,
    /// `always` topics: batches appended but not yet written to the file. The group-commit
    /// leader writes them with one `pwrite` right before its fsync, so no write runs during
    /// an fsync and a group costs one write and one fsync, however many appends it holds.
    pending: Vec<u8>,
    /// (position, base offset, append time) of each pending batch, for the index.
    pending_notes: Vec<(u64, u64, u64)>,
    /// Append time of the active segment's first batch.
    first_append_ms: Option<u64>,
    closed: bool,
    rate: Rate,
}

#[derive(Debug)]
struct SyncState {
    /// Every record below this offset is fsynced.
    durable: u64,
    /// Some thread holds the leader role (is fsyncing or about to).
    syncing: bool,
    poisoned: bool,
    last_sync: Instant,
    /// Appenders parked until `durable` reaches their target.
    waiters: Vec<Waiter>,
}

/// Fsyncs one leader runs back to back before it passes the role on (and returns to its own
/// caller).
const MAX_LEADER_ROUNDS: u32 = 8;

/// What a parked appender is told when it is woken.
const WAITING: u8 = 0;
const DURABLE: u8 = 1;
const LEAD: u8 = 2;
const FAILED: u8 = 3;
/// The batch was taken back because the file system is full (nothing of it is stored).
const FULL: u8 = 4;

/// True for a write refused because the file system (or the quota) is full: nothing stored
/// is wrong, and appends work again once space is freed.
pub(super) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Why an fsync round failed.
enum SyncFailure {
    /// The write or fsync failed: the topic is poisoned.
    Io(std::io::Error, String),
    /// The write found the file system full: the queued batches were taken back.
    Full(LogError),
}

/// An appender waiting for its batch to become durable. Each waiter is woken on its own
/// (`unpark`), so a finished fsync does not send every waiter through one mutex in turn.
#[derive(Debug)]
struct Waiter {
    target: u64,
    thread: std::thread::Thread,
    state: Arc<AtomicU8>,
}

impl Waiter {
    fn wake(self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.thread.unpark();
    }
}

/// One topic (shared by every [`super::Topic`] handle).
#[derive(Debug)]
pub(crate) struct TopicInner {
    pub name: String,
    pub config: TopicConfig,
    dir: PathBuf,
    shared: Arc<Shared>,
    write: Mutex<WriteState>,
    segments: RwLock<Vec<Arc<Segment>>>,
    sync: Mutex<SyncState>,
    /// Offset after the last record readers may see.
    visible: AtomicU64,
    pub visible_tx: watch::Sender<u64>,
    /// The written end, readable without the write lock.
    written: AtomicU64,
    poisoned: AtomicBool,
    /// The last write found the file system full (for logging the episode once).
    disk_full: AtomicBool,
    /// Bytes of all segment files of the topic.
    bytes: AtomicU64,
    retention: Mutex<()>,
    open_sealed: Mutex<VecDeque<Arc<Segment>>>,
    /// Ranges (from, next) a read could not get past, logged and marked in the gap topic.
    reported_gaps: Mutex<std::collections::BTreeSet<(u64, u64)>>,
    metrics: TopicMetrics,
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(format!("syncing directory {}", dir.display()), e))
}

impl TopicInner {
    fn fsyncs(&self) -> bool {
        self.config.fsync != FsyncPolicy::Named(NamedFsync::Never)
    }

    fn always(&self) -> bool {
        self.config.fsync == FsyncPolicy::Named(NamedFsync::Always)
    }

    /// Segment size the topic rolls at, clamped to what the format supports.
    fn segment_bytes(&self) -> u64 {
        self.config.segment_bytes.clamp(
            super::config::MIN_SEGMENT_BYTES,
            super::config::MAX_SEGMENT_BYTES,
        )
    }

    /// Opens the topic in `dir` (creating the directory and a first segment if needed) and
    /// recovers the tail of its last segment.
    pub(super) fn open(
        shared: Arc<Shared>,
        name: &str,
        config: TopicConfig,
    ) -> Result<TopicInner, LogError> {
        let dir = shared.dir.join(name);
        let ctx = |what: &str| format!("{what} topic directory {}", dir.display());
        let mut created_dir = false;
        if !dir.exists() {
            std::fs::create_dir(&dir).map_err(|e| io_error(ctx("creating"), e))?;
            created_dir = true;
        }
        let topic_name: Arc<str> = Arc::from(name);
        let mut found: Vec<(u64, u64)> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_error(ctx("listing"), e))? {
            let entry = entry.map_err(|e| io_error(ctx("listing"), e))?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if let Some(base) = segment::parse_log_file_name(&file_name) {
                let len = entry
                    .metadata()
                    .map_err(|e| io_error(ctx("reading"), e))?
                    .len();
                found.push((base, len));
            } else if file_name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            } else if !file_name.ends_with(".index") {
                tracing::warn!(topic = name, file = %file_name, "Ignoring a file that is not a segment in a topic directory.");
            }
        }
        found.sort_unstable();
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(found.len().max(1));
        let (active, recovered) = match found.pop() {
            Some((base, _)) => {
                for (b, len) in &found {
                    segments.push(Arc::new(Segment::open_sealed(
                        Arc::clone(&topic_name),
                        &dir,
                        *b,
                        *len,
                    )));
                }
                let (seg, rec) = Segment::recover_active(Arc::clone(&topic_name), &dir, base)?;
                (Arc::new(seg), Some(rec))
            }
            None => (
                Arc::new(Segment::create(Arc::clone(&topic_name), &dir, 0)?),
                None,
            ),
        };
        if created_dir || recovered.is_none() {
            sync_dir(&dir)?;
            if created_dir {
                sync_dir(&shared.dir)?;
            }
        }
        segments.push(Arc::clone(&active));
        let next_offset = recovered.as_ref().map_or(active.base, |r| r.next_offset);
        let (file, _) = active.handle()?;
        let bytes: u64 = segments.iter().map(|s| s.len.load(Ordering::Acquire)).sum();
        shared.budget.add_existing(bytes);
        shared
            .segments
            .fetch_add(segments.len() as u64, Ordering::AcqRel);
        shared
            .segments_gauge
            .set(shared.segments.load(Ordering::Acquire) as f64);
        if let Some(rec) = &recovered {
            shared.truncated.add(rec.truncated_bytes);
        }
        let labels = [("topic", name)];
        let reg = metrics::global();
        let metrics = TopicMetrics {
            records: reg.counter(
                "outpost_log_appended_records_total",
                "Records appended to the log.",
                &labels,
            ),
            bytes: reg.counter(
                "outpost_log_appended_bytes_total",
                "Bytes of batches appended to the log.",
                &labels,
            ),
            fsyncs: reg.counter(
                "outpost_log_fsyncs_total",
                "Fsyncs of log segment files.",
                &labels,
            ),
            corrupt: reg.counter(
                "outpost_log_corrupt_reads_total",
                "Reads that met a batch failing its checksum or format checks.",
                &labels,
            ),
            read_gaps: reg.counter(
                "outpost_log_read_gaps_total",
                "Reads answered with a gap: they started at a lost or damaged range.",
                &labels,
            ),
            size: reg.gauge(
                "outpost_log_bytes",
                "Bytes of all segment files of a topic.",
                &labels,
            ),
        };
        metrics.size.set(bytes as f64);
        let len = active.len.load(Ordering::Acquire);
        let (visible_tx, _) = watch::channel(next_offset);
        Ok(TopicInner {
            name: name.to_string(),
            config,
            dir,
            write: Mutex::new(WriteState {
                active,
                file,
                next_offset,
                len,
                file_len: len,
                pending: Vec::new(),
                pending_notes: Vec::new(),
                first_append_ms: recovered.and_then(|r| r.first_append_ms),
                closed: false,
                rate: Rate {
                    started: Instant::now(),
                    buckets: Default::default(),
                },
            }),
            segments: RwLock::new(segments),
            sync: Mutex::new(SyncState {
                durable: next_offset,
                syncing: false,
                poisoned: false,
                last_sync: Instant::now(),
                waiters: Vec::new(),
            }),
            visible: AtomicU64::new(next_offset),
            visible_tx,
            written: AtomicU64::new(next_offset),
            poisoned: AtomicBool::new(false),
            disk_full: AtomicBool::new(false),
            bytes: AtomicU64::new(bytes),
            retention: Mutex::new(()),
            open_sealed: Mutex::new(VecDeque::new()),
            reported_gaps: Mutex::new(std::collections::BTreeSet::new()),
            metrics,
            shared,
        })
    }

    fn poison(&self, what: &str, error: &std::io::Error) {
        self.poisoned.store(true, Ordering::Release);
        let waiters = {
            let mut s = lock(&self.sync);
            s.poisoned = true;
            std::mem::take(&mut s.waiters)
        };
        for w in waiters {
            w.wake(FAILED);
        }
        tracing::error!(topic = %self.name, error = %error, during = what, "A write or fsync failed; the topic refuses further appends until restart.");
    }

    /// A write found the file system full (called with the write lock held): cuts the active
    /// segment back to the end of the last batch written whole, takes back the batches an
    /// `always` topic had queued (their appenders are told the disk is full and get their
    /// records back) and answers [`LogError::StorageFull`]. Nothing acknowledged is touched:
    /// it lies below the cut. Unlike a failed fsync this does not poison the topic: appends
    /// work again as soon as there is room.
    fn refuse_full(&self, w: &mut WriteState, e: &std::io::Error) -> LogError {
        if let Err(cut) = w.file.set_len(w.file_len) {
            self.poison("cutting a partial write off after the disk filled up", &cut);
            return io_error(
                format!(
                    "cutting {} back to {} bytes",
                    w.active.log_path.display(),
                    w.file_len
                ),
                cut,
            );
        }
        let taken_back = w.pending.len() as u64;
        if let Some(&(_, base, _)) = w.pending_notes.first() {
            w.next_offset = base;
        }
        w.pending.clear();
        w.pending_notes.clear();
        w.len = w.file_len;
        if w.len == 0 {
            w.first_append_ms = None;
        }
        self.written.store(w.next_offset, Ordering::Release);
        if taken_back > 0 {
            self.shared.budget.release(taken_back);
            let before = self
                .bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    Some(b.saturating_sub(taken_back))
                })
                .unwrap_or(0);
            self.metrics
                .size
                .set(before.saturating_sub(taken_back) as f64);
            let refused = {
                let mut sync = lock(&self.sync);
                let durable = sync.durable;
                let (refused, rest): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut sync.waiters)
                    .into_iter()
                    .partition(|waiter| waiter.target > durable);
                sync.waiters = rest;
                refused
            };
            for waiter in refused {
                waiter.wake(FULL);
            }
        }
        self.full_error(e)
    }

    /// The answer to an append the full file system refused (logged once per episode).
    fn full_error(&self, e: &std::io::Error) -> LogError {
        self.shared.budget.count_full();
        if !self.disk_full.swap(true, Ordering::AcqRel) {
            tracing::warn!(topic = %self.name, dir = %self.dir.display(), error = %e, "The file system is full: appends are refused with storage full until space is freed; nothing acknowledged was lost.");
        }
        LogError::StorageFull(format!(
            "the file system holding {} is full ({e}); nothing of this batch was stored, and appends work again once space is freed",
            self.dir.display()
        ))
    }

    /// Makes `end` the visible end if it is beyond the current one and wakes waiters.
    fn publish_visible(&self, end: u64) {
        let before = self.visible.fetch_max(end, Ordering::AcqRel);
        if end > before {
            self.visible_tx.send_if_modified(|v| {
                if end > *v {
                    *v = end;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Records that everything below `end` is durable (called with the write lock held, after
    /// a roll's fsync).
    fn mark_durable(&self, end: u64) {
        let covered = {
            let mut s = lock(&self.sync);
            if end > s.durable {
                s.durable = end;
            }
            s.last_sync = Instant::now();
            let durable = s.durable;
            take_covered(&mut s.waiters, durable)
        };
        self.publish_visible(end);
        for w in covered {
            w.wake(DURABLE);
        }
    }

    fn record_fsync(&self, started: Instant) {
        self.metrics.fsyncs.inc();
        self.shared.add_fsync_time(started.elapsed());
    }

    pub(super) fn append(&self, records: Vec<NewRecord>) -> Result<AppendAck, LogError> {
        self.append_with(records, true)
    }

    /// Appends; `budgeted = false` skips the disk budget (gap markers only: they must not be
    /// refused by the pressure that causes them) and never triggers eviction.
    pub(super) fn append_with(
        &self,
        records: Vec<NewRecord>,
        budgeted: bool,
    ) -> Result<AppendAck, LogError> {
        self.try_append_with(records, budgeted)
            .map_err(|failed| failed.error)
    }

    /// [`Self::append_with`] that hands the records back when the append fails, so a caller
    /// can retry (after a full disk has room again) without keeping a copy. The records are
    /// kept until the append is acknowledged; after a failure on an `always` topic some of
    /// them may have been written but not made durable.
    pub(super) fn try_append_with(
        &self,
        records: Vec<NewRecord>,
        budgeted: bool,
    ) -> Result<AppendAck, AppendFailed> {
        let fail = |error: LogError, records: Vec<NewRecord>| Err(AppendFailed { error, records });
        if records.is_empty() {
            return fail(LogError::EmptyAppend, records);
        }
        let limit = self.shared.config.max_record_bytes;
        for r in &records {
            let size = r.payload_size();
            if size > limit {
                return fail(LogError::RecordTooLarge { size, limit }, records);
            }
        }
        if self.shared.is_closed() {
            return fail(LogError::Closed, records);
        }
        let now = self.shared.clock.now_ms();
        let mut batch = match format::encode_batch(&records, now) {
            Ok(batch) => batch,
            Err(size) => {
                let limit = format::MAX_BATCH_BYTES;
                return fail(LogError::RecordTooLarge { size, limit }, records);
            }
        };
        let count = records.len() as u64;
        let batch_len = batch.len() as u64;

        let (first, end) = match self.append_locked(&mut batch, count, now, budgeted) {
            Ok(ends) => ends,
            // The disk budget is exhausted: evict (lowest priority first) once, then retry.
            Err(LogError::StorageFull(why)) if budgeted => {
                if self.shared.evict_for_append(batch_len) == 0 {
                    return fail(LogError::StorageFull(why), records);
                }
                match self.append_locked(&mut batch, count, now, budgeted) {
                    Ok(ends) => ends,
                    Err(e) => return fail(e, records),
                }
            }
            Err(e) => return fail(e, records),
        };
        drop(batch);
        if budgeted {
            self.shared.kick_eviction_if_pressed();
        }
        if self.always() {
            if let Err(e) = self.wait_durable(end) {
                return fail(e, records);
            }
        }
        if self.disk_full.load(Ordering::Acquire) && self.disk_full.swap(false, Ordering::AcqRel) {
            tracing::info!(topic = %self.name, "The file system has room again: appends are stored again.");
        }
        Ok(AppendAck {
            first_offset: first,
            last_offset: end - 1,
        })
    }

    /// The part of an append under the write lock: roll if due, reserve the bytes, assign
    /// offsets and write or queue the batch. Returns (first offset, end).
    fn append_locked(
        &self,
        batch: &mut [u8],
        count: u64,
        now: u64,
        budgeted: bool,
    ) -> Result<(u64, u64), LogError> {
        let batch_len = batch.len() as u64;
        let mut w = lock(&self.write);
        if w.closed || self.shared.is_closed() {
            return Err(LogError::Closed);
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned(self.name.clone()));
        }
        let too_big = w.len > 0 && w.len + batch_len > self.segment_bytes();
        let too_old = w
            .first_append_ms
            .is_some_and(|t| now.saturating_sub(t) >= self.config.segment_ms);
        if w.active.is_sealed() || too_big || too_old {
            self.roll(&mut w)?;
        }
        if budgeted {
            self.shared.budget.reserve(batch_len)?;
        } else {
            self.shared.budget.force_reserve(batch_len);
        }
        let base = w.next_offset;
        format::finalize_batch(batch, base);
        let pos = w.len;
        if self.always() {
            // Written by the group-commit leader together with the rest of its group.
            w.pending.extend_from_slice(batch);
            w.pending_notes.push((pos, base, now));
        } else {
            if let Err(e) = w.file.write_all_at(batch, pos) {
                self.shared.budget.release(batch_len);
                if is_disk_full(&e) {
                    return Err(self.refuse_full(&mut w, &e));
                }
                self.poison("append", &e);
                return Err(io_error(
                    format!("appending to {}", w.active.log_path.display()),
                    e,
                ));
            }
            w.file_len = pos + batch_len;
            w.active.len.store(w.file_len, Ordering::Release);
            w.active.note_batch(pos, base, now);
        }
        let end = base + count;
        w.len += batch_len;
        w.next_offset = end;
        w.first_append_ms.get_or_insert(now);
        w.rate.add(count);
        self.written.store(end, Ordering::Release);
        let total = self.bytes.fetch_add(batch_len, Ordering::AcqRel) + batch_len;
        self.metrics.size.set(total as f64);
        self.metrics.records.add(count);
        self.metrics.bytes.add(batch_len);
        if !self.always() {
            w.active.visible_len.store(w.len, Ordering::Release);
            self.publish_visible(end);
        }
        Ok((base, end))
    }

    /// Seals the active segment (fsynced first unless the policy is `never`) and starts a new
    /// one at the written end. Called with the write lock held.
    fn roll(&self, w: &mut WriteState) -> Result<(), LogError> {
        let old = Arc::clone(&w.active);
        if let Err((e, context)) = flush_pending(w) {
            if is_disk_full(&e) {
                return Err(self.refuse_full(w, &e));
            }
            self.poison("write before a segment roll", &e);
            return Err(io_error(context, e));
        }
        if !old.is_sealed() {
            if self.fsyncs() {
                let started = Instant::now();
                if let Err(e) = w.file.sync_data() {
                    self.poison("fsync before a segment roll", &e);
                    return Err(io_error(format!("syncing {}", old.log_path.display()), e));
                }
                self.record_fsync(started);
            }
            old.seal(w.len, self.fsyncs());
            if self.fsyncs() {
                self.mark_durable(w.next_offset);
            }
            tracing::debug!(topic = %self.name, segment = %old.log_path.display(), bytes = w.len, "Sealed a segment.");
        }
        let seg = match Segment::create(Arc::from(self.name.as_str()), &self.dir, w.next_offset) {
            Ok(seg) => Arc::new(seg),
            // Nothing was written: the sealed segment stays, and the next append tries again.
            Err(LogError::Io { source, .. }) if is_disk_full(&source) => {
                return Err(self.full_error(&source));
            }
            Err(e) => return Err(e),
        };
        if self.fsyncs() {
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                self.poison("fsync of the topic directory", &e);
                return Err(io_error(
                    format!("syncing directory {}", self.dir.display()),
                    e,
                ));
            }
        }
        let (file, _) = seg.handle()?;
        write_lock(&self.segments).push(Arc::clone(&seg));
        let n = self.shared.segments.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.segments_gauge.set(n as f64);
        w.active = seg;
        w.file = file;
        w.len = 0;
        w.file_len = 0;
        w.first_append_ms = None;
        Ok(())
    }

    /// Returns once every record below `target` is fsynced. If no fsync is under way the
    /// caller becomes the leader and fsyncs everything written so far; otherwise it parks
    /// until a leader's fsync covers it, or until it is handed the leader role. No lock is
    /// held during an fsync, so appends keep writing and the next group forms meanwhile.
    fn wait_durable(&self, target: u64) -> Result<(), LogError> {
        let parked = {
            let mut s = lock(&self.sync);
            if s.durable >= target {
                return Ok(());
            }
            if s.poisoned {
                return Err(LogError::Poisoned(self.name.clone()));
            }
            if s.syncing {
                let state = Arc::new(AtomicU8::new(WAITING));
                s.waiters.push(Waiter {
                    target,
                    thread: std::thread::current(),
                    state: Arc::clone(&state),
                });
                Some(state)
            } else {
                s.syncing = true;
                None
            }
        };
        if let Some(state) = parked {
            loop {
                match state.load(Ordering::Acquire) {
                    WAITING => std::thread::park(),
                    DURABLE => return Ok(()),
                    LEAD => break,
                    FULL => {
                        return Err(
                            self.full_error(&std::io::Error::from_raw_os_error(libc::ENOSPC))
                        )
                    }
                    _ => return Err(LogError::Poisoned(self.name.clone())),
                }
            }
        }
        self.lead(target)
    }

    /// Runs fsyncs as the leader until `target` is durable. While other appenders wait for
    /// a later fsync, the leader keeps going (up to [`MAX_LEADER_ROUNDS`]) instead of handing
    /// the role over: the next fsync starts at once, without waiting for another thread to
    /// be scheduled. Covered waiters are woken before each further fsync, so they write their
    /// next batches while it runs. Then the role passes to a waiter or is given up.
    fn lead(&self, target: u64) -> Result<(), LogError> {
        let mut rounds = 0;
        loop {
            let result = self.sync_once();
            rounds += 1;
            let mut s = lock(&self.sync);
            s.last_sync = Instant::now();
            let end = match result {
                Ok(end) => end,
                Err(SyncFailure::Io(e, context)) => {
                    s.syncing = false;
                    drop(s);
                    self.poison("fsync", &e);
                    return Err(io_error(context, e));
                }
                Err(SyncFailure::Full(error)) => {
                    // The waiters of the batches taken back were told; whoever queued since
                    // gets the leader role.
                    let next = s.waiters.pop();
                    s.syncing = next.is_some();
                    drop(s);
                    if let Some(next) = next {
                        next.wake(LEAD);
                    }
                    return Err(error);
                }
            };
            if end > s.durable {
                s.durable = end;
            }
            let durable = s.durable;
            let covered = take_covered(&mut s.waiters, durable);
            let more = !s.waiters.is_empty();
            let keep_leading = durable < target || (more && rounds < MAX_LEADER_ROUNDS);
            let next = if keep_leading { None } else { s.waiters.pop() };
            s.syncing = keep_leading || next.is_some();
            drop(s);
            for w in covered {
                w.wake(DURABLE);
            }
            if keep_leading {
                continue;
            }
            if let Some(next) = next {
                next.wake(LEAD);
            }
            return Ok(());
        }
    }

    /// One fsync of the active segment; returns the offset it covers.
    fn sync_once(&self) -> Result<u64, SyncFailure> {
        let (seg, file, end, len) = {
            let mut w = lock(&self.write);
            if let Err((e, context)) = flush_pending(&mut w) {
                if is_disk_full(&e) {
                    return Err(SyncFailure::Full(self.refuse_full(&mut w, &e)));
                }
                return Err(SyncFailure::Io(e, context));
            }
            (
                Arc::clone(&w.active),
                Arc::clone(&w.file),
                w.next_offset,
                w.len,
            )
        };
        let started = Instant::now();
        file.sync_data()
            .map_err(|e| SyncFailure::Io(e, format!("syncing {}", seg.log_path.display())))?;
        self.record_fsync(started);
        seg.visible_len.fetch_max(len, Ordering::AcqRel);
        self.publish_visible(end);
        Ok(end)
    }

    /// Fsyncs everything written so far.
    pub(super) fn sync_all(&self) -> Result<(), LogError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned(self.name.clone()));
        }
        self.wait_durable(self.written.load(Ordering::Acquire))
    }

    /// For `interval_ms` topics: how long until the next background sync is due (zero = now).
    pub(super) fn interval_sync_due(&self) -> Option<Duration> {
        let FsyncPolicy::Interval { interval_ms } = self.config.fsync else {
            return None;
        };
        let interval = Duration::from_millis(interval_ms.max(1));
        if self.poisoned.load(Ordering::Acquire) {
            return None;
        }
        let s = lock(&self.sync);
        if s.durable >= self.written.load(Ordering::Acquire) {
            return Some(interval);
        }
        Some(interval.saturating_sub(s.last_sync.elapsed()))
    }

    /// Syncs and refuses further appends (`Log::close`).
    pub(super) fn close(&self) -> Result<(), LogError> {
        lock(&self.write).closed = true;
        if self.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned(self.name.clone()));
        }
        match self.sync_all() {
            // Batches still queued found the disk full and were taken back (their appenders
            // were told): everything acknowledged is stored; make sure it is durable.
            Err(LogError::StorageFull(_)) => self.sync_all()?,
            other => other?,
        }
        let sealed: Vec<Arc<Segment>> = read_lock(&self.segments)
            .iter()
            .filter(|s| s.is_sealed())
            .cloned()
            .collect();
        for seg in sealed {
            seg.sync_if_needed()?;
        }
        sync_dir(&self.dir)
    }

    pub(super) fn start_offset(&self) -> u64 {
        read_lock(&self.segments).first().map_or(0, |s| s.base)
    }

    pub(super) fn next_offset(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    pub(super) fn stats(&self) -> TopicStats {
        let (first_offset, segments) = {
            let list = read_lock(&self.segments);
            (list.first().map_or(0, |s| s.base), list.len())
        };
        let records_per_sec = lock(&self.write).rate.per_sec();
        TopicStats {
            name: self.name.clone(),
            first_offset,
            next_offset: self.next_offset(),
            bytes: self.bytes.load(Ordering::Acquire),
            segments,
            records_per_sec,
        }
    }

    /// Opens (or reuses) a segment's file, keeping at most a few sealed ones open.
    fn segment_file(&self, seg: &Arc<Segment>) -> Result<Arc<File>, LogError> {
        let (file, opened) = seg.handle()?;
        if opened && seg.is_sealed() {
            let mut open = lock(&self.open_sealed);
            open.push_back(Arc::clone(seg));
            while open.len() > OPEN_SEALED_FILES {
                if let Some(old) = open.pop_front() {
                    if !Arc::ptr_eq(&old, seg) {
                        old.release_handle();
                    }
                }
            }
        }
        Ok(file)
    }

    pub(super) fn read(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Fetch, LogError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.read_once(offset, max_records, max_bytes) {
                Err(Retry) if attempts < 5 => continue,
                Err(Retry) => {
                    return Err(LogError::Io {
                        context: format!("reading topic {:?}", self.name),
                        source: std::io::Error::other(
                            "segments kept being deleted during the read",
                        ),
                    })
                }
                Ok(result) => return result,
            }
        }
    }

    fn read_once(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Result<Fetch, LogError>, Retry> {
        let visible = self.visible.load(Ordering::Acquire);
        let (start, tail) = {
            let list = read_lock(&self.segments);
            let start = list.first().map_or(0, |s| s.base);
            let from = offset.max(start);
            let i = list.partition_point(|s| s.base <= from).saturating_sub(1);
            let tail: Vec<Arc<Segment>> = if from < visible && max_records > 0 {
                list[i..].to_vec()
            } else {
                Vec::new()
            };
            (start, tail)
        };
        let from = offset.max(start);
        if tail.is_empty() {
            return Ok(Ok(Fetch {
                records: Vec::new(),
                next_offset: from.min(visible),
                start_offset: start,
            }));
        }
        let mut take = Take {
            from,
            until: visible,
            max_records,
            max_bytes,
            bytes: 0,
            full: false,
        };
        let mut out: Vec<Record> = Vec::new();
        let mut cursor = from;
        for (i, seg) in tail.iter().enumerate() {
            let seg_until = tail.get(i + 1).map_or(visible, |n| n.base.min(visible));
            if cursor >= seg_until {
                continue;
            }
            let result = self
                .segment_file(seg)
                .and_then(|file| seg.read_into(&file, seg_until, &mut take, &mut out));
            let gap = match result {
                Ok(ReadEnd::Done) => None,
                Ok(ReadEnd::Gap(_)) | Err(_) if seg.deleted.load(Ordering::Acquire) => {
                    if out.is_empty() {
                        return Err(Retry);
                    }
                    break;
                }
                Ok(ReadEnd::Gap(gap)) => Some(gap),
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && seg.is_sealed() =>
                {
                    // The segment's file is gone though the topic still lists it.
                    Some(GapFound {
                        from_offset: seg.base,
                        next_offset: seg_until,
                        reason: super::REASON_LOST,
                        bytes: seg.len.load(Ordering::Acquire),
                        detail: format!("segment {} is missing", seg.file_name()),
                    })
                }
                Err(e) => {
                    if out.is_empty() {
                        return Ok(Err(e));
                    }
                    break;
                }
            };
            if let Some(gap) = gap {
                self.report_gap(&gap);
                if out.is_empty() {
                    self.metrics.read_gaps.inc();
                    return Ok(Err(LogError::Gap {
                        topic: self.name.clone(),
                        from_offset: gap.from_offset,
                        next_offset: gap.next_offset,
                        reason: gap.reason,
                        detail: gap.detail,
                    }));
                }
                // Serve what came before the range; the next read starts at it and is told.
                cursor = gap.from_offset;
                break;
            }
            if take.full {
                break;
            }
            cursor = seg_until;
        }
        let next_offset = out.last().map_or(cursor, |r| r.offset + 1);
        Ok(Ok(Fetch {
            records: out,
            next_offset,
            start_offset: start,
        }))
    }

    /// Logs a range a read cannot get past and records it in the gap topic, once per range
    /// and run (whoever reads it: every consumer then finds the same marker).
    fn report_gap(&self, gap: &GapFound) {
        if gap.reason == super::REASON_DAMAGED {
            self.metrics.corrupt.inc();
        }
        let range = (gap.from_offset, gap.next_offset);
        {
            let mut reported = lock(&self.reported_gaps);
            if reported.len() >= MAX_REPORTED_GAPS {
                // A disk in ruins: forget the oldest ranges rather than grow without bound
                // (a range read again is then marked again; markers are at least once).
                reported.clear();
            }
            if !reported.insert(range) {
                return;
            }
        }
        tracing::error!(topic = %self.name, from_offset = gap.from_offset, next_offset = gap.next_offset, reason = gap.reason, detail = %gap.detail, "Offsets {}..{} of topic {} are {} and cannot be read; readers are told and go on at {} by policy.", gap.from_offset, gap.next_offset, self.name, gap.reason, gap.next_offset);
        let marker = GapMarker {
            topic: self.name.clone(),
            from_offset: gap.from_offset,
            to_offset: gap.next_offset.saturating_sub(1),
            bytes: gap.bytes,
            reason: gap.reason.to_string(),
            ts_ms: self.shared.clock.now_ms(),
        };
        let written = self
            .shared
            .log
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or(LogError::Closed)
            .and_then(|log| log.open_topic(super::GAPS_TOPIC))
            .and_then(|gaps| super::evict::write_gap(&gaps, &marker));
        if let Err(e) = written {
            // Allowed to be tried again by the next read of the range.
            lock(&self.reported_gaps).remove(&range);
            tracing::error!(topic = %self.name, from_offset = gap.from_offset, next_offset = gap.next_offset, error = %e, "The gap marker for a range that cannot be read could not be written.");
        }
    }

    /// Rolls an idle active segment whose first batch is older than `segment_ms`, so that it
    /// can age out like any other.
    fn roll_if_idle_and_old(&self, now_ms: u64) -> Result<(), LogError> {
        let mut w = lock(&self.write);
        if w.closed || self.poisoned.load(Ordering::Acquire) || w.len == 0 {
            return Ok(());
        }
        if w.first_append_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.segment_ms)
        {
            self.roll(&mut w)?;
        }
        Ok(())
    }

    /// Deletes whatever [`retention::plan`] allows after asking the guards.
    pub(super) fn enforce_retention(&self) -> Result<RetentionReport, LogError> {
        let _one_at_a_time = lock(&self.retention);
        let now = self.shared.clock.now_ms();
        self.roll_if_idle_and_old(now)?;
        let list: Vec<Arc<Segment>> = read_lock(&self.segments).clone();
        let Some((_active, sealed)) = list.split_last() else {
            return Ok(RetentionReport::default());
        };
        let limits = Limits {
            retention_ms: self.config.retention_ms,
            retention_bytes: self.config.retention_bytes,
        };
        if limits.retention_ms == 0 && limits.retention_bytes == 0 {
            return Ok(RetentionReport::default());
        }
        let mut infos = Vec::with_capacity(sealed.len());
        for (i, seg) in sealed.iter().enumerate() {
            let end = list[i + 1].base;
            let newest_ms = if limits.retention_ms > 0 {
                match seg.newest_append_ms() {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(topic = %self.name, segment = %seg.log_path.display(), error = %e, "Could not read a segment's newest append time; it is not deleted by age.");
                        None
                    }
                }
            } else {
                None
            };
            infos.push(SegmentInfo {
                base: seg.base,
                end,
                bytes: seg.len.load(Ordering::Acquire),
                newest_ms,
            });
        }
        let guards = self.shared.guards();
        let protected = guards
            .iter()
            .filter_map(|g| g.protected_from(&self.name))
            .min();
        let n = retention::plan(
            &infos,
            self.bytes.load(Ordering::Acquire),
            limits,
            now,
            protected,
        );
        if n == 0 {
            return Ok(RetentionReport::default());
        }
        let end_offset = infos[n - 1].end;
        for guard in &guards {
            if let Err(reason) = guard.before_delete(&self.name, end_offset) {
                tracing::warn!(topic = %self.name, end_offset, reason = %reason, guard = ?guard, "A retention guard refused; no segments of this topic are deleted now.");
                return Ok(RetentionReport::default());
            }
        }
        let Some(result) = self.drop_oldest(sealed, n) else {
            return Ok(RetentionReport::default());
        };
        let (report, first_error) = result;
        self.shared.retention_deleted.add(report.bytes_deleted);
        tracing::info!(topic = %self.name, segments = report.segments_deleted, bytes = report.bytes_deleted, start_offset = end_offset, "Retention deleted old segments.");
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Removes the `n` oldest of `sealed` from the topic and deletes their files, if they are
    /// still its oldest segments (`None` otherwise: someone else deleted meanwhile). Called
    /// with the retention lock held. Returns what went and the first deletion error.
    fn drop_oldest(
        &self,
        sealed: &[Arc<Segment>],
        n: usize,
    ) -> Option<(RetentionReport, Option<LogError>)> {
        let removed: Vec<Arc<Segment>> = {
            let mut list = write_lock(&self.segments);
            let still_oldest = list.len() > n
                && n <= sealed.len()
                && list
                    .iter()
                    .zip(sealed)
                    .take(n)
                    .all(|(a, b)| Arc::ptr_eq(a, b));
            if !still_oldest {
                return None;
            }
            list.drain(..n).collect()
        };
        let mut report = RetentionReport::default();
        let mut first_error = None;
        for seg in &removed {
            let len = seg.len.load(Ordering::Acquire);
            if let Err(e) = seg.remove_files() {
                tracing::warn!(topic = %self.name, error = %e, "Deleting a segment file failed.");
                first_error.get_or_insert(e);
            }
            seg.release_handle();
            report.segments_deleted += 1;
            report.bytes_deleted += len;
            let _ = self
                .bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    Some(b.saturating_sub(len))
                });
            self.shared.budget.release(len);
        }
        lock(&self.open_sealed).retain(|s| !s.deleted.load(Ordering::Acquire));
        let n_total = self
            .shared
            .segments
            .fetch_sub(removed.len() as u64, Ordering::AcqRel)
            - removed.len() as u64;
        self.shared.segments_gauge.set(n_total as f64);
        self.metrics
            .size
            .set(self.bytes.load(Ordering::Acquire) as f64);
        let _ = sync_dir(&self.dir);
        Some((report, first_error))
    }

    /// Facts eviction plans with: every sealed segment, oldest first (the active one never
    /// goes).
    pub(super) fn sealed_infos(&self) -> Vec<SegmentInfo> {
        let list: Vec<Arc<Segment>> = read_lock(&self.segments).clone();
        let mut out = Vec::with_capacity(list.len().saturating_sub(1));
        for pair in list.windows(2) {
            let seg = &pair[0];
            let newest_ms = match seg.known_newest_append_ms() {
                Some(t) => Some(t),
                None => {
                    // Read once (then cached); the file is closed again unless a reader had
                    // it open, so a long log does not pin one descriptor per segment.
                    let opened = seg.handle().map(|(_, opened)| opened).unwrap_or(false);
                    let newest = seg.newest_append_ms().unwrap_or_else(|e| {
                        tracing::warn!(topic = %self.name, segment = %seg.log_path.display(), error = %e, "Could not read a segment's newest append time; eviction treats it as oldest.");
                        None
                    });
                    if opened {
                        seg.release_handle();
                    }
                    newest
                }
            };
            out.push(SegmentInfo {
                base: seg.base,
                end: pair[1].base,
                bytes: seg.len.load(Ordering::Acquire),
                newest_ms,
            });
        }
        out
    }

    /// Evicts the topic's oldest segment if it is still the sealed segment starting at
    /// `base`: asks the guards' `before_delete` (their `protected_from` is ignored: that is
    /// eviction), calls `mark_gap` with (from offset, last offset, bytes) — which must make
    /// the gap marker durable, or fail and so cancel the eviction — then deletes the files.
    /// Returns the evicted range, or `None` when nothing was evicted.
    pub(super) fn evict_oldest(
        &self,
        base: u64,
        mark_gap: &mut dyn FnMut(u64, u64, u64) -> Result<(), LogError>,
    ) -> Result<Option<(u64, u64, u64)>, LogError> {
        let _one_at_a_time = lock(&self.retention);
        let (seg, end) = {
            let list = read_lock(&self.segments);
            match (list.first(), list.get(1)) {
                (Some(first), Some(next)) if first.base == base => (Arc::clone(first), next.base),
                _ => return Ok(None),
            }
        };
        let bytes = seg.len.load(Ordering::Acquire);
        for guard in &self.shared.guards() {
            if let Err(reason) = guard.before_delete(&self.name, end) {
                tracing::warn!(topic = %self.name, end_offset = end, reason = %reason, guard = ?guard, "A retention guard refused; the segment is not evicted now.");
                return Ok(None);
            }
        }
        if end > base {
            mark_gap(base, end - 1, bytes)?;
        }
        let sealed = [Arc::clone(&seg)];
        // A file that could not be deleted was warned about; the range is gone from the log
        // either way, and its gap marker is written.
        let Some((report, _)) = self.drop_oldest(&sealed, 1) else {
            return Ok(None);
        };
        Ok(Some((base, end, report.bytes_deleted)))
    }

    /// Every segment's base offset (for tests).
    #[cfg(test)]
    pub fn segment_bases(&self) -> Vec<u64> {
        read_lock(&self.segments).iter().map(|s| s.base).collect()
    }

    /// Test hook: take the leader role as if an fsync were in flight (`true`), or give it
    /// back (`false`), handing it to a waiter as a leader would.
    #[cfg(test)]
    pub fn set_syncing_for_test(&self, syncing: bool) {
        let mut s = lock(&self.sync);
        if syncing {
            s.syncing = true;
            return;
        }
        let next = s.waiters.pop();
        s.syncing = next.is_some();
        drop(s);
        if let Some(next) = next {
            next.wake(LEAD);
        }
    }

    /// Test hook: the written and the durable end.
    #[cfg(test)]
    pub fn ends_for_test(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Acquire),
            lock(&self.sync).durable,
        )
    }

    /// Test hook: make the next write go to `file`.
    #[cfg(test)]
    pub fn replace_file_for_test(&self, file: File) {
        lock(&self.write).file = Arc::new(file);
    }
}

impl Drop for TopicInner {
    fn drop(&mut self) {
        // Best effort: the last handle going away syncs what a `never` topic would otherwise
        // leave to the OS only if the policy asks for syncs at all.
        if self.fsyncs() && !self.poisoned.load(Ordering::Acquire) {
            let mut w = lock(&self.write);
            if let Err((e, context)) = flush_pending(&mut w) {
                tracing::warn!(topic = %self.name, error = %e, context = %context, "The final write of a topic failed.");
                return;
            }
            if lock(&self.sync).durable < w.next_offset {
                if let Err(e) = w.file.sync_data() {
                    tracing::warn!(topic = %self.name, error = %e, "The final fsync of a topic failed.");
                }
            }
        }
    }
}

/// Writes the pending batches of an `always` topic to the active segment (one `pwrite`) and
/// notes them in the index. Called with the write lock held.
fn flush_pending(w: &mut WriteState) -> Result<(), (std::io::Error, String)> {
    if w.pending.is_empty() {
        return Ok(());
    }
    w.file
        .write_all_at(&w.pending, w.file_len)
        .map_err(|e| (e, format!("appending to {}", w.active.log_path.display())))?;
    w.file_len += w.pending.len() as u64;
    w.pending.clear();
    w.active.len.store(w.file_len, Ordering::Release);
    for (pos, base, ms) in w.pending_notes.drain(..) {
        w.active.note_batch(pos, base, ms);
    }
    Ok(())
}

/// Removes and returns the waiters whose target is at or below `durable`.
fn take_covered(waiters: &mut Vec<Waiter>, durable: u64) -> Vec<Waiter> {
    if waiters.iter().all(|w| w.target > durable) {
        return Vec::new();
    }
    let (covered, rest): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(waiters)
        .into_iter()
        .partition(|w| w.target <= durable);
    *waiters = rest;
    covered
}

/// A segment was deleted under a read; the read starts over.
#[derive(Debug)]
struct Retry;
