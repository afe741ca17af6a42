//! One segment: a `<base>.log` file of batches plus its `<base>.index` sparse index. Owns
//! reading batches back (with checksum checks), the tail scan that recovers the active
//! segment on open, and keeping the index in step with the log (lazy load, check on use,
//! rebuild from the log).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::format::{self, BatchHeader, Malformed, Take, HEADER_LEN};
use super::index::{self, IndexEntry};
use super::{io_error, lock, LogError, Record};

/// Bytes read per `pread` while reading or scanning a segment.
const READ_CHUNK: usize = 64 * 1024;
/// The largest window a read slides through a segment with (a batch larger than this is read
/// whole). Larger windows read past what a bounded fetch takes: 5,000 forwarded records
/// (~1.2 MB) read through 4 MiB windows copied three times what they used.
const MAX_READ_WINDOW: usize = 256 * 1024;
const SCAN_CHUNK: usize = 1024 * 1024;

/// The file name of the segment with base offset `base`.
pub(crate) fn log_file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The file name of that segment's index.
pub(crate) fn index_file_name(base: u64) -> String {
    format!("{base:020}.index")
}

/// The base offset encoded in a segment file name (`<20 digits>.log`), if it is one.
pub(crate) fn parse_log_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Debug, Default)]
struct IndexState {
    entries: Vec<IndexEntry>,
    /// False until the index file of a segment from an earlier run was read.
    loaded: bool,
    /// True once the entries were built from the log itself in this process.
    verified: bool,
    /// The open index file of the active segment (entries are appended to it as they come).
    file: Option<File>,
}

/// How a read of one segment ended without an I/O error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// The limits were reached or every wanted record was read.
    Done,
    /// The read met a range it cannot read and stopped there (records before it were kept).
    Gap(GapFound),
}

/// A range of a segment that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GapFound {
    /// The first offset that cannot be read.
    pub from_offset: u64,
    /// The next readable offset: a later batch of this segment that verifies, or the
    /// segment's end (the next segment's base).
    pub next_offset: u64,
    /// `lost` (the segment ends early) or `damaged` (a batch fails its checks).
    pub reason: &'static str,
    /// Bytes of the segment file the range spans (as far as known).
    pub bytes: u64,
    /// What was found where, for messages.
    pub detail: String,
}

/// What a scan over a range of a segment found.
#[derive(Debug)]
struct ScanOutcome {
    /// Byte position after the last good batch.
    end_pos: u64,
    /// Offset after the last good batch.
    end_offset: u64,
    /// Index entries: the seed plus the entries for the batches scanned.
    entries: Vec<IndexEntry>,
    newest_append_ms: Option<u64>,
    /// Why the scan stopped before the limit, if it did.
    stop: Option<String>,
}

/// What recovery of the active segment found.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub next_offset: u64,
    pub first_append_ms: Option<u64>,
    pub truncated_bytes: u64,
}

/// Batches read from one file through a window buffer.
struct BatchReader<'a> {
    file: &'a File,
    /// Bytes past this position are never read.
    limit: u64,
    chunk: usize,
    /// The window's memory; only `buf[..valid]` holds file bytes. Kept between refills, so a
    /// slide costs one pread and neither an allocation nor zeroing.
    buf: Vec<u8>,
    valid: usize,
    buf_start: u64,
}

/// One step of a [`BatchReader`].
enum Step {
    Batch(BatchHeader),
    /// Exactly at the limit.
    End,
    /// A header or batch runs past the limit (or past the real end of the file).
    Incomplete(String),
    Bad(Malformed),
}

impl<'a> BatchReader<'a> {
    fn new(file: &'a File, limit: u64, chunk: usize) -> Self {
        Self {
            file,
            limit,
            chunk,
            buf: Vec::new(),
            valid: 0,
            buf_start: 0,
        }
    }

    /// Makes `[pos, pos + need)` available in the buffer; false if it crosses the limit or the
    /// end of the file.
    fn ensure(&mut self, pos: u64, need: u64) -> io::Result<bool> {
        let Some(end) = pos.checked_add(need) else {
            return Ok(false);
        };
        if end > self.limit {
            return Ok(false);
        }
        let buf_end = self.buf_start + self.valid as u64;
        if pos >= self.buf_start && end <= buf_end {
            return Ok(true);
        }
        let want = need.max(self.chunk as u64).min(self.limit - pos);
        let want = usize::try_from(want).map_err(|_| io::Error::other("read window overflows"))?;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        self.valid = 0;
        match self.file.read_exact_at(&mut self.buf[..want], pos) {
            Ok(()) => {
                self.buf_start = pos;
                self.valid = want;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn slice(&self, pos: u64, len: u64) -> &[u8] {
        let start = (pos - self.buf_start) as usize;
        &self.buf[..self.valid][start..start + len as usize]
    }

    fn step(&mut self, pos: u64) -> io::Result<Step> {
        if pos == self.limit {
            return Ok(Step::End);
        }
        if !self.ensure(pos, HEADER_LEN as u64)? {
            return Ok(Step::Incomplete(format!(
                "{} bytes left where a {HEADER_LEN}-byte batch header should start",
                self.limit.saturating_sub(pos)
            )));
        }
        let header = match format::parse_header(self.slice(pos, HEADER_LEN as u64)) {
            Ok(h) => h,
            Err(m) => return Ok(Step::Bad(m)),
        };
        if !self.ensure(pos, header.total_len())? {
            return Ok(Step::Incomplete(format!(
                "a batch of {} bytes with only {} bytes left",
                header.total_len(),
                self.limit.saturating_sub(pos)
            )));
        }
        Ok(Step::Batch(header))
    }

    /// True if every byte from `pos` to the limit is zero.
    fn rest_is_zero(&mut self, mut pos: u64) -> io::Result<bool> {
        while pos < self.limit {
            let n = (self.limit - pos).min(self.chunk as u64);
            if !self.ensure(pos, n)? {
                return Ok(false);
            }
            if self.slice(pos, n).iter().any(|b| *b != 0) {
                return Ok(false);
            }
            pos += n;
        }
        Ok(true)
    }
}

/// Reads good batches from `start_pos` up to `limit`, checking checksums and that offsets
/// continue densely from `start_offset`; stops at the first bad or incomplete batch.
fn scan(
    file: &File,
    base: u64,
    limit: u64,
    start_pos: u64,
    start_offset: u64,
    seed: Vec<IndexEntry>,
) -> io::Result<ScanOutcome> {
    let mut reader = BatchReader::new(file, limit, SCAN_CHUNK);
    let mut out = ScanOutcome {
        end_pos: start_pos,
        end_offset: start_offset,
        entries: seed,
        newest_append_ms: None,
        stop: None,
    };
    loop {
        let pos = out.end_pos;
        let header = match reader.step(pos)? {
            Step::End => return Ok(out),
            Step::Incomplete(detail) => {
                out.stop = Some(format!("torn batch: {detail}"));
                return Ok(out);
            }
            Step::Bad(m) => {
                out.stop = Some(m.to_string());
                return Ok(out);
            }
            Step::Batch(h) => h,
        };
        if header.base_offset != out.end_offset {
            out.stop = Some(format!(
                "batch has base offset {}, expected {}",
                header.base_offset, out.end_offset
            ));
            return Ok(out);
        }
        if let Err(m) = format::verify_batch(&header, reader.slice(pos, header.total_len())) {
            out.stop = Some(m.to_string());
            return Ok(out);
        }
        if index::wants_entry(&out.entries, pos) {
            if let (Ok(rel), Ok(p)) = (u32::try_from(header.base_offset - base), u32::try_from(pos))
            {
                out.entries.push(IndexEntry { rel, pos: p });
            }
        }
        out.newest_append_ms = Some(out.newest_append_ms.unwrap_or(0).max(header.append_time_ms));
        out.end_offset = header.end_offset();
        out.end_pos = pos + header.total_len();
    }
}

/// One segment of a topic.
#[derive(Debug)]
pub(crate) struct Segment {
    topic: Arc<str>,
    pub base: u64,
    pub log_path: PathBuf,
    index_path: PathBuf,
    handle: Mutex<Option<Arc<File>>>,
    /// Bytes in the file (written, not necessarily visible).
    pub len: AtomicU64,
    /// Bytes readers may read: every batch below this is acknowledged.
    pub visible_len: AtomicU64,
    sealed: AtomicBool,
    /// False for a sealed segment whose data was never fsynced (a `never` topic).
    synced: AtomicBool,
    /// Set by retention just before the files are removed.
    pub deleted: AtomicBool,
    /// Newest append time of any batch; 0 = not known yet.
    newest_append_ms: AtomicU64,
    index: Mutex<IndexState>,
}

impl Segment {
    fn new(topic: Arc<str>, dir: &Path, base: u64, len: u64) -> Segment {
        Segment {
            topic,
            base,
            log_path: dir.join(log_file_name(base)),
            index_path: dir.join(index_file_name(base)),
            handle: Mutex::new(None),
            len: AtomicU64::new(len),
            visible_len: AtomicU64::new(len),
            sealed: AtomicBool::new(true),
            synced: AtomicBool::new(true),
            deleted: AtomicBool::new(false),
            newest_append_ms: AtomicU64::new(0),
            index: Mutex::new(IndexState::default()),
        }
    }

    /// Creates a new, empty active segment (its files must not exist yet).
    pub(super) fn create(topic: Arc<str>, dir: &Path, base: u64) -> Result<Segment, LogError> {
        let seg = Segment::new(topic, dir, base, 0);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&seg.log_path)
            .map_err(|e| io_error(format!("creating segment {}", seg.log_path.display()), e))?;
        let index_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&seg.index_path)
            .map_err(|e| {
                // No half-made segment stays behind to block the next try (a full disk).
                let _ = fs::remove_file(&seg.log_path);
                io_error(format!("creating index {}", seg.index_path.display()), e)
            })?;
        *lock(&seg.handle) = Some(Arc::new(file));
        {
            let mut st = lock(&seg.index);
            st.loaded = true;
            st.verified = true;
            st.file = Some(index_file);
        }
        seg.sealed.store(false, Ordering::Release);
        Ok(seg)
    }

    /// A sealed segment found on disk; nothing is read until it is used.
    pub(super) fn open_sealed(topic: Arc<str>, dir: &Path, base: u64, len: u64) -> Segment {
        Segment::new(topic, dir, base, len)
    }

    /// Opens the last segment of a topic as the active one: scans from its last usable index
    /// entry to the end, truncates a torn or corrupt tail (logging what was cut), and brings
    /// the index file in line with the log.
    pub(super) fn recover_active(
        topic: Arc<str>,
        dir: &Path,
        base: u64,
    ) -> Result<(Segment, Recovered), LogError> {
        let seg = Segment::new(topic, dir, base, 0);
        let ctx = |what: &str| format!("{what} segment {}", seg.log_path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg.log_path)
            .map_err(|e| io_error(ctx("opening"), e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error(ctx("reading the size of"), e))?
            .len();
        let index_bytes = match fs::read(&seg.index_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %seg.index_path.display(), error = %e, "Reading an index file failed; it will be rebuilt.");
                Vec::new()
            }
        };
        let mut entries = index::parse(&index_bytes, len);
        // Start from the last entry that points at a plausible batch with the right offset.
        let mut reader = BatchReader::new(&file, len, HEADER_LEN);
        while let Some(last) = entries.last().copied() {
            let ok = matches!(reader.step(u64::from(last.pos)), Ok(Step::Batch(h)) if h.base_offset == base + u64::from(last.rel));
            if ok {
                break;
            }
            entries.pop();
        }
        let (start_pos, start_offset) = match entries.pop() {
            Some(e) => (u64::from(e.pos), base + u64::from(e.rel)),
            None => (0, base),
        };
        let outcome = scan(&file, base, len, start_pos, start_offset, entries)
            .map_err(|e| io_error(ctx("scanning the tail of"), e))?;
        let truncated_bytes = len - outcome.end_pos;
        if truncated_bytes > 0 {
            tracing::warn!(
                topic = %seg.topic,
                segment = %seg.log_path.display(),
                position = outcome.end_pos,
                bytes = truncated_bytes,
                next_offset = outcome.end_offset,
                reason = outcome.stop.as_deref().unwrap_or("unknown"),
                "Recovery cut a torn or corrupt tail off the active segment."
            );
            file.set_len(outcome.end_pos)
                .map_err(|e| io_error(ctx("truncating the torn tail of"), e))?;
        }
        // What the previous process wrote may still sit only in the page cache: make it
        // durable before any of it becomes visible.
        file.sync_all().map_err(|e| io_error(ctx("syncing"), e))?;
        let new_index = index::encode_all(&outcome.entries);
        let index_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&seg.index_path)
            .map_err(|e| io_error(format!("opening index {}", seg.index_path.display()), e))?;
        if new_index != index_bytes {
            if let Err(e) = index_file
                .set_len(0)
                .and_then(|()| index_file.write_all_at(&new_index, 0))
            {
                tracing::warn!(path = %seg.index_path.display(), error = %e, "Rewriting an index file failed; it will be rebuilt later.");
            }
        }
        let first_append_ms = if outcome.end_pos > 0 {
            let mut header = [0u8; HEADER_LEN];
            file.read_exact_at(&mut header, 0)
                .ok()
                .and_then(|()| format::parse_header(&header).ok())
                .map(|h| h.append_time_ms)
        } else {
            None
        };
        seg.len.store(outcome.end_pos, Ordering::Release);
        seg.visible_len.store(outcome.end_pos, Ordering::Release);
        seg.sealed.store(false, Ordering::Release);
        if let Some(t) = outcome.newest_append_ms {
            seg.newest_append_ms.store(t, Ordering::Release);
        }
        {
            let mut st = lock(&seg.index);
            st.entries = outcome.entries;
            st.loaded = true;
            st.verified = false;
            st.file = Some(index_file);
        }
        *lock(&seg.handle) = Some(Arc::new(file));
        let recovered = Recovered {
            next_offset: outcome.end_offset,
            first_append_ms,
            truncated_bytes,
        };
        Ok((seg, recovered))
    }

    /// The file name, for messages.
    pub(super) fn file_name(&self) -> String {
        log_file_name(self.base)
    }

    pub(super) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub(super) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub(super) fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// The open file, opening a sealed segment's file on first use. The flag tells whether it
    /// was opened just now.
    pub(super) fn handle(&self) -> Result<(Arc<File>, bool), LogError> {
        let mut h = lock(&self.handle);
        if let Some(f) = h.as_ref() {
            return Ok((Arc::clone(f), false));
        }
        let f = File::open(&self.log_path)
            .map_err(|e| io_error(format!("opening segment {}", self.log_path.display()), e))?;
        let f = Arc::new(f);
        *h = Some(Arc::clone(&f));
        Ok((f, true))
    }

    /// Closes a sealed segment's file until it is read again.
    pub(super) fn release_handle(&self) {
        if self.is_sealed() {
            *lock(&self.handle) = None;
        }
    }

    /// Marks the segment sealed at `len` bytes: no more writes, everything written is visible.
    pub(super) fn seal(&self, len: u64, synced: bool) {
        self.len.store(len, Ordering::Release);
        self.visible_len.fetch_max(len, Ordering::AcqRel);
        self.synced.store(synced, Ordering::Release);
        self.sealed.store(true, Ordering::Release);
        lock(&self.index).file = None;
    }

    /// Records that a batch starting at `pos` with base offset `offset` and append time
    /// `append_ms` was written; adds an index entry when one is due.
    pub(super) fn note_batch(&self, pos: u64, offset: u64, append_ms: u64) {
        self.newest_append_ms.fetch_max(append_ms, Ordering::AcqRel);
        let mut st = lock(&self.index);
        if !index::wants_entry(&st.entries, pos) {
            return;
        }
        let (Ok(rel), Ok(p)) = (u32::try_from(offset - self.base), u32::try_from(pos)) else {
            return;
        };
        let entry = IndexEntry { rel, pos: p };
        st.entries.push(entry);
        let at = ((st.entries.len() - 1) * index::ENTRY_LEN) as u64;
        if let Some(f) = &st.file {
            if let Err(e) = f.write_all_at(&entry.encode(), at) {
                tracing::warn!(path = %self.index_path.display(), error = %e, "Writing an index entry failed; the index will be rebuilt when needed.");
            }
        }
    }

    /// The newest append time if it is known without reading the file.
    pub(super) fn known_newest_append_ms(&self) -> Option<u64> {
        let known = self.newest_append_ms.load(Ordering::Acquire);
        (known != 0).then_some(known)
    }

    /// The newest append time of the segment, reading the tail after its last index entry
    /// when it is not known yet (a segment from an earlier run).
    pub(super) fn newest_append_ms(&self) -> Result<Option<u64>, LogError> {
        let known = self.newest_append_ms.load(Ordering::Acquire);
        if known != 0 {
            return Ok(Some(known));
        }
        let (file, _) = self.handle()?;
        let limit = self.visible_len.load(Ordering::Acquire);
        let start = {
            let mut st = lock(&self.index);
            self.ensure_loaded(&mut st, &file, limit)?;
            st.entries.last().copied()
        };
        let (pos, offset, seed) = match start {
            Some(e) => (u64::from(e.pos), self.base + u64::from(e.rel), vec![e]),
            None => (0, self.base, Vec::new()),
        };
        let outcome = scan(&file, self.base, limit, pos, offset, seed)
            .map_err(|e| io_error(format!("reading segment {}", self.log_path.display()), e))?;
        if let Some(t) = outcome.newest_append_ms {
            self.newest_append_ms.fetch_max(t, Ordering::AcqRel);
        }
        Ok(outcome.newest_append_ms)
    }

    fn ensure_loaded(&self, st: &mut IndexState, file: &File, limit: u64) -> Result<(), LogError> {
        if st.loaded {
            return Ok(());
        }
        let bytes = match fs::read(&self.index_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %self.index_path.display(), error = %e, "Reading an index file failed; it will be rebuilt.");
                Vec::new()
            }
        };
        let entries = index::parse(&bytes, limit);
        st.loaded = true;
        if entries.is_empty() && limit > 0 {
            tracing::info!(topic = %self.topic, segment = %self.log_path.display(), "The segment's index is missing or unreadable; rebuilding it from the log.");
            self.rebuild_locked(st, file, limit)?;
        } else {
            st.entries = entries;
            st.verified = false;
        }
        Ok(())
    }

    /// Rebuilds the index from the log bytes below `limit`; entries above the limit (written
    /// by this process to the active segment) are kept. Rewrites the index file.
    fn rebuild_locked(&self, st: &mut IndexState, file: &File, limit: u64) -> Result<(), LogError> {
        let outcome = scan(file, self.base, limit, 0, self.base, Vec::new()).map_err(|e| {
            io_error(
                format!(
                    "rebuilding the index of segment {}",
                    self.log_path.display()
                ),
                e,
            )
        })?;
        if let Some(reason) = &outcome.stop {
            tracing::warn!(topic = %self.topic, segment = %self.log_path.display(), position = outcome.end_pos, reason = %reason, "The index rebuild stopped at a bad batch; records after it in this segment cannot be read.");
        }
        let mut entries = outcome.entries;
        let last_pos = entries.last().map(|e| e.pos);
        let last_rel = entries.last().map(|e| e.rel);
        entries.extend(st.entries.iter().copied().filter(|e| {
            u64::from(e.pos) >= limit && Some(e.pos) > last_pos && Some(e.rel) > last_rel
        }));
        st.entries = entries;
        st.verified = true;
        st.loaded = true;
        let bytes = index::encode_all(&st.entries);
        let written = match &st.file {
            Some(f) => f.set_len(0).and_then(|()| f.write_all_at(&bytes, 0)),
            None => {
                let tmp = self.index_path.with_extension("index.tmp");
                fs::write(&tmp, &bytes).and_then(|()| fs::rename(&tmp, &self.index_path))
            }
        };
        if let Err(e) = written {
            tracing::warn!(path = %self.index_path.display(), error = %e, "Writing a rebuilt index failed; the in-memory index is used.");
        }
        Ok(())
    }

    /// Where to start reading for offset `from`: (byte position, its offset, came from an
    /// unverified index entry).
    fn start_point(
        &self,
        file: &File,
        from: u64,
        limit: u64,
    ) -> Result<(u64, u64, bool), LogError> {
        let mut st = lock(&self.index);
        self.ensure_loaded(&mut st, file, limit)?;
        let rel = from.saturating_sub(self.base);
        Ok(match index::lookup(&st.entries, rel) {
            Some(i) => {
                let e = st.entries[i];
                (
                    u64::from(e.pos),
                    self.base + u64::from(e.rel),
                    !st.verified && e.pos != 0,
                )
            }
            None => (0, self.base, false),
        })
    }

    fn rebuild_index(&self, file: &File, limit: u64) -> Result<(), LogError> {
        let mut st = lock(&self.index);
        self.rebuild_locked(&mut st, file, limit)
    }

    /// The first batch after byte `pos` that a (later) index entry points at, that has the
    /// entry's offset, continues past `after_offset` and verifies: (its position, its offset).
    /// Entries are the only trusted way back into a segment after damage: a search for the
    /// magic could land on a batch-shaped record value.
    fn resync(
        &self,
        file: &File,
        limit: u64,
        pos: u64,
        after_offset: u64,
    ) -> Result<Option<(u64, u64)>, LogError> {
        let entries: Vec<IndexEntry> = {
            let mut st = lock(&self.index);
            self.ensure_loaded(&mut st, file, limit)?;
            st.entries
                .iter()
                .copied()
                .filter(|e| u64::from(e.pos) > pos && self.base + u64::from(e.rel) > after_offset)
                .collect()
        };
        let mut reader = BatchReader::new(file, limit, READ_CHUNK);
        for e in entries {
            let (at, offset) = (u64::from(e.pos), self.base + u64::from(e.rel));
            let step = reader.step(at).map_err(|err| {
                io_error(format!("reading segment {}", self.log_path.display()), err)
            })?;
            if let Step::Batch(h) = step {
                if h.base_offset == offset
                    && format::verify_batch(&h, reader.slice(at, h.total_len())).is_ok()
                {
                    return Ok(Some((at, offset)));
                }
            }
        }
        Ok(None)
    }

    /// Reads records at offsets `take.from..until` of this segment into `out`, within
    /// `take`'s limits. Never returns a record from a batch that failed its checks, and never
    /// a record past a range it cannot read: it stops there with [`ReadEnd::Gap`].
    pub(super) fn read_into(
        &self,
        file: &File,
        until: u64,
        take: &mut Take,
        out: &mut Vec<Record>,
    ) -> Result<ReadEnd, LogError> {
        let limit = self.visible_len.load(Ordering::Acquire);
        let from = take.from.max(self.base);
        let mut rebuilt = false;
        loop {
            let (start_pos, start_offset, from_index) = self.start_point(file, from, limit)?;
            match self.scan_read(
                file,
                limit,
                start_pos,
                start_offset,
                from_index,
                until,
                take,
                out,
            )? {
                Scanned::End(end) => return Ok(end),
                Scanned::IndexMismatch(detail) if !rebuilt => {
                    tracing::warn!(topic = %self.topic, segment = %self.log_path.display(), position = start_pos, detail = %detail, "An index entry does not match the log; rebuilding the index.");
                    self.rebuild_index(file, limit)?;
                    rebuilt = true;
                }
                Scanned::IndexMismatch(detail) => {
                    let damage = Damage {
                        pos: start_pos,
                        expected: start_offset,
                        lost: false,
                        detail,
                    };
                    return self.gap(file, limit, until, damage).map(ReadEnd::Gap);
                }
            }
        }
    }

    /// The range a read cannot get past, from the damage found at `damage.pos` (where offset
    /// `damage.expected` should start) to the next batch that verifies or the segment's end.
    fn gap(
        &self,
        file: &File,
        limit: u64,
        until: u64,
        damage: Damage,
    ) -> Result<GapFound, LogError> {
        let resumed = if damage.expected < until {
            self.resync(file, limit, damage.pos, damage.expected)?
                .filter(|(_, offset)| *offset < until)
        } else {
            None
        };
        let (next_offset, bytes, reason) = match resumed {
            Some((at, offset)) => (offset, at - damage.pos, super::REASON_DAMAGED),
            None if damage.lost => (until, limit.saturating_sub(damage.pos), super::REASON_LOST),
            None => (
                until,
                limit.saturating_sub(damage.pos),
                super::REASON_DAMAGED,
            ),
        };
        Ok(GapFound {
            from_offset: damage.expected,
            next_offset: next_offset.max(damage.expected),
            reason,
            bytes,
            detail: format!(
                "segment {}, byte {}: {}",
                self.file_name(),
                damage.pos,
                damage.detail
            ),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_read(
        &self,
        file: &File,
        limit: u64,
        start_pos: u64,
        start_offset: u64,
        from_index: bool,
        until: u64,
        take: &mut Take,
        out: &mut Vec<Record>,
    ) -> Result<Scanned, LogError> {
        let chunk = READ_CHUNK.max(take.max_bytes.saturating_add(4096).min(MAX_READ_WINDOW));
        let mut reader = BatchReader::new(file, limit, chunk);
        let mut pos = start_pos;
        let mut expected = start_offset;
        let mut first = true;
        let io_ctx = || format!("reading segment {}", self.log_path.display());
        let sealed = self.is_sealed();
        while expected < until && !take.full {
            let step = reader.step(pos).map_err(|e| io_error(io_ctx(), e))?;
            let damage = |lost: bool, detail: String| Damage {
                pos,
                expected,
                lost,
                detail,
            };
            let found = match step {
                Step::Batch(h) if h.base_offset == expected => {
                    let bytes = reader.slice(pos, h.total_len());
                    match format::verify_batch(&h, bytes) {
                        Ok(()) => Ok(h),
                        Err(m) => Err(damage(false, m.to_string())),
                    }
                }
                Step::Batch(h) => {
                    let detail = format!(
                        "batch has base offset {}, expected {expected}",
                        h.base_offset
                    );
                    if first && from_index {
                        return Ok(Scanned::IndexMismatch(detail));
                    }
                    Err(damage(false, detail))
                }
                Step::Bad(m) if first && from_index => {
                    return Ok(Scanned::IndexMismatch(m.to_string()))
                }
                Step::Bad(Malformed::Zeroed)
                    if sealed
                        && reader
                            .rest_is_zero(pos)
                            .map_err(|e| io_error(io_ctx(), e))? =>
                {
                    Err(damage(true, "only zeros follow".into()))
                }
                Step::Bad(m) => Err(damage(false, m.to_string())),
                Step::End => Err(damage(
                    sealed,
                    format!("the segment ends before offset {expected}"),
                )),
                Step::Incomplete(detail) => Err(damage(sealed, detail)),
            };
            let header = match found {
                Ok(h) => h,
                Err(damage) => {
                    let gap = self.gap(file, limit, until, damage)?;
                    if out.is_empty() && gap.next_offset <= take.from && gap.next_offset < until {
                        // The damage lies wholly before the wanted offset: read on from the
                        // batch after it.
                        if let Some((at, offset)) = self.resync(file, limit, pos, expected)? {
                            if offset == gap.next_offset {
                                pos = at;
                                expected = offset;
                                first = false;
                                continue;
                            }
                        }
                    }
                    return Ok(Scanned::End(ReadEnd::Gap(gap)));
                }
            };
            first = false;
            if header.end_offset() > take.from {
                let bytes = reader.slice(pos, header.total_len());
                let mut batch_take = Take {
                    until: take.until.min(until),
                    ..*take
                };
                let before = out.len();
                if let Err(m) = format::decode_records(&header, bytes, &mut batch_take, out) {
                    // Verified batches always decode; should one not, none of it is served.
                    out.truncate(before);
                    let damage = Damage {
                        pos,
                        expected,
                        lost: false,
                        detail: m.to_string(),
                    };
                    return self
                        .gap(file, limit, until, damage)
                        .map(|g| Scanned::End(ReadEnd::Gap(g)));
                }
                take.bytes = batch_take.bytes;
                take.full = batch_take.full;
            }
            expected = header.end_offset();
            pos += header.total_len();
        }
        Ok(Scanned::End(ReadEnd::Done))
    }

    /// Makes a sealed segment's data durable if it never was (close of a `never` topic).
    pub(super) fn sync_if_needed(&self) -> Result<(), LogError> {
        if self.is_synced() {
            return Ok(());
        }
        let (f, _) = self.handle()?;
        f.sync_data()
            .map_err(|e| io_error(format!("syncing segment {}", self.log_path.display()), e))?;
        self.mark_synced();
        Ok(())
    }

    /// Removes the segment's files.
    pub(super) fn remove_files(&self) -> Result<(), LogError> {
        self.deleted.store(true, Ordering::Release);
        fs::remove_file(&self.log_path)
            .map_err(|e| io_error(format!("deleting segment {}", self.log_path.display()), e))?;
        match fs::remove_file(&self.index_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(
                format!("deleting index {}", self.index_path.display()),
                e,
            )),
        }
    }
}

enum Scanned {
    End(ReadEnd),
    IndexMismatch(String),
}

/// Where a read met data it cannot read.
struct Damage {
    /// Byte position of the bad batch (or of the end of the data).
    pos: u64,
    /// The offset the batch there should have started with.
    expected: u64,
    /// The segment ends early (end of file, a partial batch, only zeros) rather than holding
    /// a bad batch.
    lost: bool,
    detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::NewRecord;

    fn write_batches(path: &Path, base: u64, batches: usize, per_batch: usize) -> Vec<u64> {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        let mut offset = base;
        for b in 0..batches {
            let records: Vec<_> = (0..per_batch)
                .map(|i| NewRecord {
                    value: vec![(b * 7 + i) as u8; 700],
                    ..Default::default()
                })
                .collect();
            let mut batch = format::encode_batch(&records, 1_000 + b as u64).unwrap();
            format::finalize_batch(&mut batch, offset);
            starts.push(bytes.len() as u64);
            bytes.extend_from_slice(&batch);
            offset += per_batch as u64;
        }
        fs::write(path, &bytes).unwrap();
        starts
    }

    fn read_all(seg: &Segment, from: u64, until: u64) -> Result<Vec<Record>, LogError> {
        let (file, _) = seg.handle()?;
        let mut take = Take {
            from,
            until,
            max_records: usize::MAX,
            max_bytes: usize::MAX,
            bytes: 0,
            full: false,
        };
        let mut out = Vec::new();
        seg.read_into(&file, until, &mut take, &mut out)?;
        Ok(out)
    }

    #[test]
    fn a_missing_index_is_rebuilt_and_seeks_land_on_the_right_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(log_file_name(100));
        write_batches(&path, 100, 40, 2);
        let len = fs::metadata(&path).unwrap().len();
        let seg = Segment::open_sealed(Arc::from("t"), dir.path(), 100, len);
        let got = read_all(&seg, 151, 180).unwrap();
        assert_eq!(got.first().map(|r| r.offset), Some(151));
        assert_eq!(got.len(), 29);
        let index = fs::read(dir.path().join(index_file_name(100))).unwrap();
        let entries = index::parse(&index, len);
        assert!(entries.len() > 5, "about one entry per 4 KiB: {entries:?}");
    }

    #[test]
    fn a_wrong_index_entry_is_detected_and_the_index_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(log_file_name(0));
        let starts = write_batches(&path, 0, 40, 2);
        let len = fs::metadata(&path).unwrap().len();
        // Plausible but wrong: offset 20 claims to start where offset 30's batch starts.
        let wrong = [
            IndexEntry { rel: 0, pos: 0 },
            IndexEntry {
                rel: 20,
                pos: starts[15] as u32,
            },
        ];
        fs::write(
            dir.path().join(index_file_name(0)),
            index::encode_all(&wrong),
        )
        .unwrap();
        let seg = Segment::open_sealed(Arc::from("t"), dir.path(), 0, len);
        let got = read_all(&seg, 25, 80).unwrap();
        assert_eq!(
            got.iter().map(|r| r.offset).collect::<Vec<_>>(),
            (25..80).collect::<Vec<_>>()
        );
        assert_eq!(got[0].value, vec![(12 * 7 + 1) as u8; 700]);
    }

    #[test]
    fn recovery_truncates_a_torn_tail_and_keeps_good_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(log_file_name(0));
        let starts = write_batches(&path, 0, 10, 3);
        let len = fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        let (seg, rec) = Segment::recover_active(Arc::from("t"), dir.path(), 0).unwrap();
        assert_eq!(rec.next_offset, 27);
        assert_eq!(rec.truncated_bytes, len - 5 - starts[9]);
        assert_eq!(seg.len.load(Ordering::Acquire), starts[9]);
        assert_eq!(rec.first_append_ms, Some(1_000));
        assert_eq!(read_all(&seg, 0, 27).unwrap().len(), 27);
    }

    #[test]
    fn segment_file_names_round_trip() {
        assert_eq!(log_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_log_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_log_file_name("42.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000004x.log"), None);
        assert_eq!(parse_log_file_name("00000000000000000042.index"), None);
    }
}
