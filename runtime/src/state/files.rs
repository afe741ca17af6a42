//! File-level durability for the sled directory: a full `fsync` of every file and directory
//! sled keeps (sled's own `flush()` on Linux stops at `sync_file_range`), and random ids read
//! from `/dev/urandom`.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use super::StateError;

fn io_error(context: String, source: std::io::Error) -> StateError {
    StateError::Io { context, source }
}

/// Fsyncs every regular file under `dir` (sled's `db`, `conf`, `blobs/*`, `snap.*`), then
/// every directory bottom-up, `dir` itself last, so new and renamed entries are durable too.
/// Returns how many files and directories were synced. Entries that vanish while the walk
/// runs (sled replaces snapshots by rename) are skipped: whatever replaced them is found in
/// the directory that is synced afterwards, or by the next `sync()`.
pub(super) fn fsync_tree(dir: &Path) -> Result<usize, StateError> {
    let mut synced = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(io_error(
                format!("listing state directory {}", dir.display()),
                e,
            ))
        }
    };
    for entry in entries {
        let entry =
            entry.map_err(|e| io_error(format!("listing state directory {}", dir.display()), e))?;
        let path = entry.path();
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(format!("inspecting {}", path.display()), e)),
        };
        if kind.is_dir() {
            synced += fsync_tree(&path)?;
        } else if kind.is_file() {
            synced += fsync_path(&path)?;
        }
    }
    synced += fsync_path(dir)?;
    Ok(synced)
}

/// Fsyncs one directory (e.g. the parent of a newly created store directory).
pub(super) fn fsync_dir(dir: &Path) -> Result<(), StateError> {
    fsync_path(dir).map(|_| ())
}

/// Fsyncs one file or directory; a path that no longer exists counts as nothing to do.
fn fsync_path(path: &Path) -> Result<usize, StateError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(io_error(
                format!("opening {} to fsync it", path.display()),
                e,
            ))
        }
    };
    file.sync_all()
        .map_err(|e| io_error(format!("fsync of {}", path.display()), e))?;
    Ok(1)
}

/// A fresh edge id: `edge-` followed by 12 lowercase hex digits from `/dev/urandom`.
pub(super) fn random_edge_id() -> Result<String, StateError> {
    let mut bytes = [0u8; 6];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| io_error("reading /dev/urandom for a new edge id".to_string(), e))?;
    let mut id = String::with_capacity(17);
    id.push_str("edge-");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_edge_ids_have_the_documented_shape_and_differ() {
        let a = random_edge_id().unwrap();
        let b = random_edge_id().unwrap();
        assert_eq!(a.len(), 17, "{a}");
        assert!(a.starts_with("edge-"));
        assert!(a[5..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn fsync_tree_counts_every_file_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs").join("1"), b"y").unwrap();
        // db, blobs/1, blobs/, and the directory itself.
        assert_eq!(fsync_tree(dir.path()).unwrap(), 4);
        assert_eq!(fsync_tree(&dir.path().join("missing")).unwrap(), 0);
    }
}
