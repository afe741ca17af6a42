//! The ballast: [`BALLAST_BYTES`] of space the box reserves in its data directory so that it
//! can still start on a full disk. sled writes when it opens its store; on a disk with 0 bytes
//! free that write fails and the box could not even serve what it holds. So every start makes
//! sure `<data_dir>/ballast` exists (allocated, not sparse — only when at least twice its size
//! is free), and a start whose state store fails to open with ENOSPC/EDQUOT deletes the
//! ballast and tries again. The released space is kept for the state store: that run's log
//! leaves at least [`BALLAST_BYTES`] free (`log.min_free_bytes` raised to it), so appends are
//! refused (storage full: HTTP 507, MQTT acknowledgements held) until space is freed, while
//! reads and status work; appends resume by themselves once there is room, and the ballast is
//! made again at a later start.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd as _;
use std::path::Path;

/// The file's name in the data directory.
pub const BALLAST_FILE: &str = "ballast";
/// The space it holds.
pub const BALLAST_BYTES: u64 = 32 * 1024 * 1024;

/// Free bytes of the file system holding `dir` (for an unprivileged process).
fn free_bytes(dir: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct for a NUL-terminated path it only reads.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// Makes `<data_dir>/ballast` hold [`BALLAST_BYTES`] when it does not and at least twice that
/// is free. Returns whether the ballast is in place; failures are logged, never fatal.
pub fn ensure(data_dir: &Path) -> bool {
    let path = data_dir.join(BALLAST_FILE);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= BALLAST_BYTES) {
        return true;
    }
    if free_bytes(data_dir).is_none_or(|free| free < 2 * BALLAST_BYTES) {
        return false;
    }
    let made = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .and_then(|file| {
            // SAFETY: fallocate(2) on a descriptor this File owns; it allocates real blocks
            // (a sparse file would reserve nothing).
            let r =
                unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, BALLAST_BYTES as libc::off_t) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            file.sync_all()
        });
    match made {
        Ok(()) => true,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(path = %path.display(), error = %e, "Could not reserve the ballast; a start on a full disk may fail.");
            false
        }
    }
}

/// Deletes the ballast; returns whether there was one.
pub fn release(data_dir: &Path) -> bool {
    std::fs::remove_file(data_dir.join(BALLAST_FILE)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ballast_is_allocated_space_and_can_be_released() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure(dir.path()));
        let meta = std::fs::metadata(dir.path().join(BALLAST_FILE)).unwrap();
        assert_eq!(meta.len(), BALLAST_BYTES);
        use std::os::unix::fs::MetadataExt as _;
        assert!(meta.blocks() * 512 >= BALLAST_BYTES, "not sparse");
        assert!(ensure(dir.path()), "a second call keeps it");
        assert!(release(dir.path()));
        assert!(!release(dir.path()));
    }
}
