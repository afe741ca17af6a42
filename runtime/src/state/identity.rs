//! The box's identity file and the consumer-positions checkpoint: the copies of what the state
//! store holds that must survive the store itself.
//!
//! Both live in the data directory *beside* the store (`<data_dir>/identity`,
//! `<data_dir>/state.positions`), so a damaged or deleted `state/` leaves them intact. Both are
//! small text files, written whole to `<name>.tmp`, fsynced, renamed over the old file and
//! the directory fsynced, so a crash leaves the old or the new file, never a mix. Both end with
//! a checksum line; a file whose checksum does not match is treated as absent (and says so).
//!
//! # `identity` (version 1)
//!
//! ```text
//! outpost identity v1
//! edge_id <edge id>
//! store_id <store id>
//! crc32c <8 lowercase hex digits: CRC32C of every byte above this line>
//! ```
//!
//! # `state.positions` (version 1)
//!
//! ```text
//! outpost positions v1
//! <next offset>\t<consumer>\t<topic>        (one line per stored consumer offset)
//! crc32c <8 lowercase hex digits: CRC32C of every byte above this line>
//! ```
//!
//! Consumer names never hold control characters (the store refuses them); an entry whose topic
//! holds a tab or a newline is left out of the checkpoint (such topics cannot exist in the
//! log, whose names are `[A-Za-z0-9._-]`).

use std::fs::File;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};

use super::{files, StateError};

/// The identity file's name in the data directory.
pub const IDENTITY_FILE: &str = "identity";
/// The positions checkpoint's name in the data directory.
pub const POSITIONS_FILE: &str = "state.positions";

const IDENTITY_MAGIC: &str = "outpost identity v1";
const POSITIONS_MAGIC: &str = "outpost positions v1";

/// Edge id and store id as one copy holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIdentity {
    pub edge_id: String,
    pub store_id: String,
}

/// What reading a checksummed file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Read<T> {
    /// No such file.
    Absent,
    /// The file exists but fails its checks; the reason names what was wrong.
    Damaged(String),
    /// The file and its contents.
    Found(T),
}

/// Appends the checksum line to `body` and writes it to `path` durably (tmp, fsync, rename,
/// fsync of the directory).
fn write_checksummed(path: &Path, mut body: String) -> Result<(), StateError> {
    body.push_str(&format!("crc32c {:08x}\n", crc32c::crc32c(body.as_bytes())));
    let tmp = path.with_extension("tmp");
    let io = |what: &str, source| StateError::Io {
        context: format!("{what} {}", tmp.display()),
        source,
    };
    let mut file = File::create(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(body.as_bytes())
        .map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("fsync of", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|source| StateError::Io {
        context: format!("renaming {} to {}", tmp.display(), path.display()),
        source,
    })?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        files::fsync_dir(dir)?;
    }
    Ok(())
}

/// Reads `path` and checks its magic line and checksum; returns the lines between them.
fn read_checksummed(path: &Path, magic: &str) -> Result<Read<Vec<String>>, StateError> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Read::Absent),
        Err(source) => {
            return Err(StateError::Io {
                context: format!("reading {}", path.display()),
                source,
            })
        }
    };
    let Ok(text) = String::from_utf8(raw) else {
        return Ok(Read::Damaged("it is not UTF-8".into()));
    };
    let body_end = match text.trim_end_matches('\n').rfind('\n') {
        Some(i) => i + 1,
        None => return Ok(Read::Damaged("it has no checksum line".into())),
    };
    let (body, trailer) = text.split_at(body_end);
    let Some(stored) = trailer
        .trim_end()
        .strip_prefix("crc32c ")
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
    else {
        return Ok(Read::Damaged("its last line is not `crc32c <hex>`".into()));
    };
    let actual = crc32c::crc32c(body.as_bytes());
    if stored != actual {
        return Ok(Read::Damaged(format!(
            "its checksum does not match (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    let mut lines = body.lines();
    if lines.next() != Some(magic) {
        return Ok(Read::Damaged(format!("its first line is not `{magic}`")));
    }
    Ok(Read::Found(lines.map(str::to_string).collect()))
}

/// The identity file of the data directory `data_dir`.
pub fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

/// The positions checkpoint of the data directory `data_dir`.
pub fn positions_path(data_dir: &Path) -> PathBuf {
    data_dir.join(POSITIONS_FILE)
}

/// Writes the identity file durably.
pub(super) fn write_identity(path: &Path, identity: &StoredIdentity) -> Result<(), StateError> {
    write_checksummed(
        path,
        format!(
            "{IDENTITY_MAGIC}\nedge_id {}\nstore_id {}\n",
            identity.edge_id, identity.store_id
        ),
    )
}

/// Reads the identity file.
pub(super) fn read_identity(path: &Path) -> Result<Read<StoredIdentity>, StateError> {
    let lines = match read_checksummed(path, IDENTITY_MAGIC)? {
        Read::Found(lines) => lines,
        Read::Absent => return Ok(Read::Absent),
        Read::Damaged(why) => return Ok(Read::Damaged(why)),
    };
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(str::to_string)
    };
    match (field("edge_id"), field("store_id")) {
        (Some(edge_id), Some(store_id)) if !edge_id.is_empty() => {
            Ok(Read::Found(StoredIdentity { edge_id, store_id }))
        }
        _ => Ok(Read::Damaged(
            "it lacks an `edge_id` or `store_id` line".into(),
        )),
    }
}

/// One consumer's position: (consumer, topic, next offset).
pub(super) type Position = (String, String, u64);

/// Writes the positions checkpoint durably: every (consumer, topic, next offset).
pub(super) fn write_positions(path: &Path, offsets: &[Position]) -> Result<(), StateError> {
    let mut body = format!("{POSITIONS_MAGIC}\n");
    for (consumer, topic, offset) in offsets {
        if topic.contains(['\t', '\n']) || consumer.contains(['\t', '\n']) {
            continue;
        }
        body.push_str(&format!("{offset}\t{consumer}\t{topic}\n"));
    }
    write_checksummed(path, body)
}

/// Reads the positions checkpoint.
pub(super) fn read_positions(path: &Path) -> Result<Read<Vec<Position>>, StateError> {
    let lines = match read_checksummed(path, POSITIONS_MAGIC)? {
        Read::Found(lines) => lines,
        Read::Absent => return Ok(Read::Absent),
        Read::Damaged(why) => return Ok(Read::Damaged(why)),
    };
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let mut parts = line.splitn(3, '\t');
        let parsed = match (parts.next(), parts.next(), parts.next()) {
            (Some(offset), Some(consumer), Some(topic)) => offset
                .parse::<u64>()
                .ok()
                .map(|o| (consumer.to_string(), topic.to_string(), o)),
            _ => None,
        };
        match parsed {
            Some(entry) => out.push(entry),
            None => {
                return Ok(Read::Damaged(format!(
                    "line {} is not `<offset>\\t<consumer>\\t<topic>`",
                    i + 2
                )))
            }
        }
    }
    Ok(Read::Found(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_file_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        assert_eq!(read_identity(&path).unwrap(), Read::Absent);
        let id = StoredIdentity {
            edge_id: "edge-0123456789ab".into(),
            store_id: "store-7".into(),
        };
        write_identity(&path, &id).unwrap();
        assert_eq!(read_identity(&path).unwrap(), Read::Found(id));
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn a_flipped_byte_in_the_identity_file_is_reported_as_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = identity_path(dir.path());
        let id = StoredIdentity {
            edge_id: "edge-a".into(),
            store_id: "s".into(),
        };
        write_identity(&path, &id).unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        raw[25] ^= 0x01;
        std::fs::write(&path, raw).unwrap();
        match read_identity(&path).unwrap() {
            Read::Damaged(why) => assert!(why.contains("checksum"), "{why}"),
            other => panic!("expected damage, got {other:?}"),
        }
    }

    #[test]
    fn positions_read_back_in_order_and_skip_unencodable_topics() {
        let dir = tempfile::tempdir().unwrap();
        let path = positions_path(dir.path());
        let offsets = vec![
            ("plugin:fraud".to_string(), "pos.payments".to_string(), 42),
            ("sink:mqtt:v".to_string(), "fraud.scores".to_string(), 7),
            ("odd".to_string(), "a\tb".to_string(), 1),
        ];
        write_positions(&path, &offsets).unwrap();
        assert_eq!(
            read_positions(&path).unwrap(),
            Read::Found(offsets[..2].to_vec())
        );
    }
}
