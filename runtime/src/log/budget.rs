//! The global disk budget: the sum of all segment bytes against `log.max_bytes`, and the free
//! space of the data directory's file system against `log.min_free_bytes`. Free space is
//! asked of the kernel (`statvfs`) at most once a second or after every few MiB written, not
//! per append; in between it is estimated from the bytes written since.
//!
//! It also says how much eviction should free ([`Budget::eviction_need`]): eviction starts
//! when the log passes `eviction_high_water_percent` of `max_bytes` (or the free space falls
//! below `min_free_bytes * 100 / eviction_high_water_percent`) and frees until it is back at
//! `eviction_low_water_percent` (free space `min_free_bytes * 100 / eviction_low_water_percent`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{lock, LogError};
use crate::metrics::Counter;

/// Ask the file system again after this long…
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// …or after this many bytes were written.
const RECHECK_BYTES: u64 = 4 * 1024 * 1024;

/// Free bytes for an unprivileged writer on the file system holding `path`.
pub(crate) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
    // SAFETY: an all-zero `statvfs` is a valid value of this plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid, writable struct
    // that outlives the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[derive(Debug)]
pub(crate) struct Budget {
    dir: PathBuf,
    max_bytes: u64,
    min_free_bytes: u64,
    /// Bytes of every segment file of every topic.
    total: AtomicU64,
    free_at_check: AtomicU64,
    written_since_check: AtomicU64,
    last_check: Mutex<Option<Instant>>,
    full: Counter,
    /// Eviction starts above this share of the limits, in percent.
    high_water_percent: u64,
    /// Eviction frees down to this share of the limits, in percent.
    low_water_percent: u64,
}

impl Budget {
    pub(super) fn new(dir: PathBuf, max_bytes: u64, min_free_bytes: u64, full: Counter) -> Budget {
        Budget {
            dir,
            max_bytes,
            min_free_bytes,
            total: AtomicU64::new(0),
            free_at_check: AtomicU64::new(u64::MAX),
            written_since_check: AtomicU64::new(0),
            last_check: Mutex::new(None),
            full,
            high_water_percent: 100,
            low_water_percent: 100,
        }
    }

    /// Sets the eviction water marks (percent of the limits; `low <= high`, both 1..=100).
    pub(super) fn with_water_marks(mut self, high_percent: u8, low_percent: u8) -> Budget {
        self.high_water_percent = u64::from(high_percent.clamp(1, 100));
        self.low_water_percent = u64::from(low_percent.clamp(1, 100)).min(self.high_water_percent);
        self
    }

    /// Counts `bytes` as written without checking the limits: only for the few bytes of gap
    /// markers, which must not be refused by the budget whose pressure causes them.
    pub(super) fn force_reserve(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::AcqRel);
        self.written_since_check.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Asks the file system for its free space now (eviction does before it decides).
    pub(super) fn refresh_free_now(&self) {
        if self.min_free_bytes == 0 {
            return;
        }
        let mut last = lock(&self.last_check);
        *last = None;
        drop(last);
        self.maybe_refresh(0);
    }

    /// Free bytes as estimated now (`u64::MAX` when unknown or not enforced).
    fn estimated_free(&self) -> u64 {
        self.free_at_check
            .load(Ordering::Acquire)
            .saturating_sub(self.written_since_check.load(Ordering::Acquire))
    }

    /// Bytes eviction should free so that `extra` more bytes fit and the log is back at the
    /// low-water mark; 0 when the log is below the high-water mark (unless `force`, used
    /// after an append was refused, when any excess over the low-water mark counts).
    pub(super) fn eviction_need(&self, extra: u64, force: bool) -> u64 {
        let mut need = 0u64;
        if self.max_bytes > 0 {
            let total = self.total().saturating_add(extra);
            let high = percent_of(self.max_bytes, self.high_water_percent);
            let low = percent_of(self.max_bytes, self.low_water_percent);
            if force || total > high {
                need = need.max(total.saturating_sub(low));
            }
        }
        if self.min_free_bytes > 0 {
            let free = self.estimated_free().saturating_sub(extra);
            let trigger = scale_up(self.min_free_bytes, self.high_water_percent);
            let target = scale_up(self.min_free_bytes, self.low_water_percent);
            if force || free < trigger {
                need = need.max(target.saturating_sub(free));
            }
        }
        need
    }

    /// Bytes of all segments.
    pub(super) fn total(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }

    /// Counts bytes found on disk at open.
    pub(super) fn add_existing(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives back bytes of deleted segments or of a write that failed.
    pub(super) fn release(&self, bytes: u64) {
        let _ = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(bytes))
            });
    }

    /// Counts an append the file system itself refused (it was full).
    pub(super) fn count_full(&self) {
        self.full.inc();
    }

    /// Reserves room for `bytes` about to be written, or says why there is none.
    pub(super) fn reserve(&self, bytes: u64) -> Result<(), LogError> {
        let before = self.total.fetch_add(bytes, Ordering::AcqRel);
        if self.max_bytes > 0 && before.saturating_add(bytes) > self.max_bytes {
            self.release(bytes);
            self.full.inc();
            return Err(LogError::StorageFull(format!(
                "the log holds {before} bytes and `log.max_bytes` is {}; a batch of {bytes} bytes does not fit",
                self.max_bytes
            )));
        }
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let written = self.written_since_check.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.maybe_refresh(written);
        let free = self
            .free_at_check
            .load(Ordering::Acquire)
            .saturating_sub(self.written_since_check.load(Ordering::Acquire));
        if free < self.min_free_bytes {
            self.release(bytes);
            let _ =
                self.written_since_check
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                        Some(w.saturating_sub(bytes))
                    });
            self.full.inc();
            return Err(LogError::StorageFull(format!(
                "the file system of {} would have {free} bytes free after this batch and `log.min_free_bytes` is {}",
                self.dir.display(),
                self.min_free_bytes
            )));
        }
        Ok(())
    }

    pub(crate) fn maybe_refresh(&self, written: u64) {
        let Ok(mut last) = self.last_check.try_lock() else {
            return; // another appender is refreshing right now
        };
        let due = written >= RECHECK_BYTES || last.is_none_or(|t| t.elapsed() >= RECHECK_AFTER);
        if !due {
            return;
        }
        *last = Some(Instant::now());
        match free_bytes(&self.dir) {
            Ok(free) => {
                self.written_since_check.store(0, Ordering::Release);
                self.free_at_check.store(free, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "Asking the file system for free space failed; `log.min_free_bytes` is not enforced until it works again.");
                self.written_since_check.store(0, Ordering::Release);
                self.free_at_check.store(u64::MAX, Ordering::Release);
            }
        }
    }
}

/// `value * percent / 100` without overflow.
fn percent_of(value: u64, percent: u64) -> u64 {
    (u128::from(value) * u128::from(percent) / 100) as u64
}

/// `value * 100 / percent` (saturating), the free space that corresponds to `percent`.
fn scale_up(value: u64, percent: u64) -> u64 {
    let v = u128::from(value) * 100 / u128::from(percent.max(1));
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_bytes_refuses_what_does_not_fit_and_recovers_after_release() {
        let b = Budget::new(PathBuf::from("/"), 1_000, 0, Counter::default());
        b.reserve(600).unwrap();
        let err = b.reserve(500).unwrap_err().to_string();
        assert!(err.contains("`log.max_bytes` is 1000"), "{err}");
        assert_eq!(b.total(), 600);
        b.release(300);
        b.reserve(500).unwrap();
        assert_eq!(b.total(), 800);
    }

    #[test]
    fn min_free_bytes_refuses_when_the_file_system_is_too_full() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        let b = Budget::new(
            dir.path().to_path_buf(),
            0,
            u64::MAX / 2,
            Counter::default(),
        );
        let err = b.reserve(10).unwrap_err().to_string();
        assert!(err.contains("`log.min_free_bytes`"), "{err}");
        assert_eq!(b.total(), 0);
    }

    #[test]
    fn eviction_starts_above_the_high_water_mark_and_frees_down_to_the_low_one() {
        let b =
            Budget::new(PathBuf::from("/"), 1_000, 0, Counter::default()).with_water_marks(90, 70);
        b.reserve(850).unwrap();
        assert_eq!(b.eviction_need(0, false), 0);
        assert_eq!(b.eviction_need(100, false), 250);
        assert_eq!(b.eviction_need(0, true), 150);
        b.reserve(100).unwrap();
        assert_eq!(b.eviction_need(0, false), 250);
        b.release(300);
        assert_eq!(b.eviction_need(0, false), 0);
        b.force_reserve(2_000);
        assert_eq!(b.total(), 2_650);
    }

    #[test]
    fn free_space_pressure_scales_min_free_bytes_by_the_water_marks() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        // min_free is 80 % of the free space: at a high mark of 75 % the trigger (min_free /
        // 0.75) lies above the free space, so eviction is asked for.
        let min_free = free / 10 * 8;
        let b = Budget::new(dir.path().to_path_buf(), 0, min_free, Counter::default())
            .with_water_marks(75, 50);
        b.refresh_free_now();
        let need = b.eviction_need(0, false);
        assert!(need > 0 && need <= min_free * 2, "{need}");
        let relaxed = Budget::new(dir.path().to_path_buf(), 0, free / 10, Counter::default())
            .with_water_marks(90, 80);
        relaxed.refresh_free_now();
        assert_eq!(relaxed.eviction_need(0, false), 0);
    }
}
