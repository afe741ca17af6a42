//! The sparse offset index of one segment: which byte position a batch with a given offset
//! starts at, one entry roughly every [`INDEX_INTERVAL_BYTES`] of log. The index is a cache,
//! never a source of truth: it is checked against the log when used and rebuilt from the log
//! when it is missing, malformed or disagrees with it.

/// A batch gets an index entry when it starts at least this many bytes after the last entry.
pub(crate) const INDEX_INTERVAL_BYTES: u64 = 4096;
/// Bytes of one entry on disk.
pub(crate) const ENTRY_LEN: usize = 8;

/// One index entry: the batch whose base offset is `segment base + rel` starts at byte `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub rel: u32,
    pub pos: u32,
}

impl IndexEntry {
    /// The little-endian on-disk form: `rel` then `pos`.
    pub(super) fn encode(self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[..4].copy_from_slice(&self.rel.to_le_bytes());
        out[4..].copy_from_slice(&self.pos.to_le_bytes());
        out
    }
}

/// Whether a batch starting at `pos` gets an entry, given the entries so far.
pub(crate) fn wants_entry(entries: &[IndexEntry], pos: u64) -> bool {
    match entries.last() {
        None => true,
        Some(last) => pos >= u64::from(last.pos) + INDEX_INTERVAL_BYTES,
    }
}

/// Parses an index file. Keeps the longest prefix that is plausible for a log of `log_len`
/// bytes: the first entry is `(0, 0)`, both fields strictly increase, positions lie inside the
/// log. A trailing partial entry (torn write) is ignored. Plausible entries may still be wrong;
/// readers check each entry they use against the batch header it points at.
pub(crate) fn parse(bytes: &[u8], log_len: u64) -> Vec<IndexEntry> {
    let mut out: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / ENTRY_LEN);
    for chunk in bytes.chunks_exact(ENTRY_LEN) {
        let mut rel = [0u8; 4];
        let mut pos = [0u8; 4];
        rel.copy_from_slice(&chunk[..4]);
        pos.copy_from_slice(&chunk[4..]);
        let e = IndexEntry {
            rel: u32::from_le_bytes(rel),
            pos: u32::from_le_bytes(pos),
        };
        let plausible = match out.last() {
            None => e.rel == 0 && e.pos == 0,
            Some(prev) => e.rel > prev.rel && e.pos > prev.pos,
        };
        if !plausible || u64::from(e.pos) >= log_len {
            break;
        }
        out.push(e);
    }
    out
}

/// Serialises entries for writing a whole index file.
pub(crate) fn encode_all(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&e.encode());
    }
    out
}

/// The position of the last entry whose offset is at or below `rel` (the batch to start
/// scanning from), as an index into `entries`.
pub(crate) fn lookup(entries: &[IndexEntry], rel: u64) -> Option<usize> {
    let n = entries.partition_point(|e| u64::from(e.rel) <= rel);
    n.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rel: u32, pos: u32) -> IndexEntry {
        IndexEntry { rel, pos }
    }

    #[test]
    fn lookup_finds_the_last_entry_at_or_below_the_offset() {
        let entries = [e(0, 0), e(10, 4100), e(25, 8300)];
        assert_eq!(lookup(&entries, 0), Some(0));
        assert_eq!(lookup(&entries, 9), Some(0));
        assert_eq!(lookup(&entries, 10), Some(1));
        assert_eq!(lookup(&entries, 24), Some(1));
        assert_eq!(lookup(&entries, 1_000), Some(2));
        assert_eq!(lookup(&[], 5), None);
    }

    #[test]
    fn parse_keeps_the_plausible_prefix_and_drops_torn_or_wild_entries() {
        let good = [e(0, 0), e(10, 4100), e(25, 8300)];
        let mut bytes = encode_all(&good);
        assert_eq!(parse(&bytes, 10_000), good);
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(parse(&bytes, 10_000), good, "a torn last entry is ignored");
        assert_eq!(
            parse(&bytes, 8_300),
            good[..2],
            "positions past the log end are dropped"
        );
        let wild = encode_all(&[e(0, 0), e(10, 4100), e(5, 9000), e(30, 9500)]);
        assert_eq!(parse(&wild, 10_000), good[..2]);
        assert_eq!(
            parse(&encode_all(&[e(3, 0)]), 10_000),
            vec![],
            "first entry must be (0, 0)"
        );
    }

    #[test]
    fn entries_are_wanted_every_interval() {
        assert!(wants_entry(&[], 0));
        assert!(!wants_entry(&[e(0, 0)], INDEX_INTERVAL_BYTES - 1));
        assert!(wants_entry(&[e(0, 0)], INDEX_INTERVAL_BYTES));
    }
}
