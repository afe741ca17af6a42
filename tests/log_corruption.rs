//! Corruption tests of the log store: torn tails at every byte of the last batch, bit flips in
//! sealed and active segments (the length field included), zero-filled and garbage tails, lost
//! tails of sealed segments, missing segment and index files. Reopening never panics, never
//! serves a wrong record and never loses an earlier good one; a read never skips a lost or
//! damaged range silently: it stops at it, and a read that starts in it is a
//! [`LogError::Gap`] naming the next readable offset, counted and marked in `outpost.gaps`.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use outpost::log::{
    FsyncPolicy, GapMarker, Log, LogConfig, LogError, NamedFsync, NewRecord, Record, Topic,
    TopicConfig, GAPS_TOPIC, REASON_DAMAGED, REASON_LOST,
};

const TOPIC: &str = "store.events";

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        min_free_bytes: 0,
        retention_check_ms: 3_600_000,
        default_topic: TopicConfig {
            fsync: FsyncPolicy::Named(NamedFsync::Never),
            segment_bytes,
            segment_ms: 3_600_000,
            retention_ms: 0,
            retention_bytes: 0,
        },
        ..LogConfig::default()
    }
}

/// The `i`-th record: its content is derived from `i` alone so any mix-up shows.
fn record(i: u64) -> NewRecord {
    NewRecord {
        key: (i % 3 != 0).then(|| format!("key-{i}").into_bytes()),
        value: (0..(40 + (i * 37) % 260))
            .map(|j| (i * 31 + j) as u8)
            .collect(),
        headers: (0..i % 3)
            .map(|h| (format!("h{h}"), vec![h as u8; (i % 5) as usize]))
            .collect(),
        timestamp_ms: Some(1_700_000_000_000 + i),
    }
}

fn check(r: &Record) {
    let want = record(r.offset);
    assert_eq!(
        (&r.key, &r.value, &r.headers, r.timestamp_ms),
        (
            &want.key,
            &want.value,
            &want.headers,
            want.timestamp_ms.unwrap_or_default()
        ),
        "record {} differs from what was appended",
        r.offset
    );
}

/// Appends records `next..next+n` as one batch.
fn append_batch(t: &Topic, n: u64) {
    let first = t.next_offset();
    let ack = t.append((first..first + n).map(record).collect()).unwrap();
    assert_eq!((ack.first_offset, ack.last_offset), (first, first + n - 1));
}

fn read_all(t: &Topic) -> Vec<Record> {
    let mut out = Vec::new();
    let mut next = t.start_offset();
    loop {
        let f = t.read(next, 1000, 1 << 20).unwrap();
        if f.records.is_empty() {
            return out;
        }
        next = f.next_offset;
        out.extend(f.records);
    }
}

fn segment_paths(dir: &Path, ext: &str) -> Vec<PathBuf> {
    segment_paths_of(dir, TOPIC, ext)
}

fn segment_paths_of(dir: &Path, topic: &str, ext: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir.join(topic))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    paths
}

fn flip(path: &Path, pos: u64, bit: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, pos).unwrap();
}

/// After a reopen: exactly `expected` records, all intact, and appends continue densely.
fn assert_intact_and_appendable(dir: &Path, expected: u64) {
    let log = Log::open(dir, config(1 << 20)).unwrap();
    let t = log.topic(TOPIC).unwrap();
    assert_eq!(t.next_offset(), expected);
    let all = read_all(&t);
    assert_eq!(all.len() as u64, expected);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        check(r);
    }
    append_batch(&t, 2);
    let f = t.read(expected, 10, 1 << 20).unwrap();
    assert_eq!(
        f.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![expected, expected + 1]
    );
    f.records.iter().for_each(check);
    log.close().unwrap();
}

/// Builds a one-segment topic of 4 batches and returns (records before the last batch, byte
/// where the last batch starts, the pristine segment and index bytes).
fn build_active(dir: &Path) -> (u64, u64, Vec<u8>, Vec<u8>) {
    let log = Log::open(dir, config(1 << 20)).unwrap();
    let t = log.topic_or_create(TOPIC).unwrap();
    for n in [3, 1, 4] {
        append_batch(&t, n);
    }
    let seg = segment_paths(dir, "log").remove(0);
    let last_start = fs::metadata(&seg).unwrap().len();
    let before = t.next_offset();
    append_batch(&t, 3);
    log.close().unwrap();
    drop(log);
    let index = segment_paths(dir, "index").remove(0);
    (
        before,
        last_start,
        fs::read(&seg).unwrap(),
        fs::read(index).unwrap(),
    )
}

#[test]
fn truncating_the_active_segment_anywhere_in_its_last_batch_loses_only_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (before, last_start, log_bytes, index_bytes) = build_active(dir.path());
    let seg = segment_paths(dir.path(), "log").remove(0);
    let index = segment_paths(dir.path(), "index").remove(0);
    assert!(
        log_bytes.len() as u64 - last_start > 100,
        "the last batch is a few hundred bytes"
    );
    for cut in last_start..log_bytes.len() as u64 {
        fs::write(&seg, &log_bytes[..cut as usize]).unwrap();
        fs::write(&index, &index_bytes).unwrap();
        assert_intact_and_appendable(dir.path(), before);
    }
    // The uncut file keeps all of it.
    fs::write(&seg, &log_bytes).unwrap();
    fs::write(&index, &index_bytes).unwrap();
    assert_intact_and_appendable(dir.path(), before + 3);
}

#[test]
fn a_bit_flip_anywhere_in_the_last_batch_of_the_active_segment_drops_only_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (before, last_start, log_bytes, index_bytes) = build_active(dir.path());
    let seg = segment_paths(dir.path(), "log").remove(0);
    let index = segment_paths(dir.path(), "index").remove(0);
    for pos in last_start..log_bytes.len() as u64 {
        fs::write(&seg, &log_bytes).unwrap();
        fs::write(&index, &index_bytes).unwrap();
        flip(&seg, pos, (pos % 8) as u8);
        assert_intact_and_appendable(dir.path(), before);
    }
}

#[test]
fn zero_filled_or_garbage_tails_are_cut_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (before, _, log_bytes, index_bytes) = build_active(dir.path());
    let all = before + 3;
    let seg = segment_paths(dir.path(), "log").remove(0);
    let index = segment_paths(dir.path(), "index").remove(0);
    let mut garbage_header = log_bytes[..44].to_vec(); // a real header whose batch is missing
    garbage_header.extend_from_slice(&[0xab; 100]);
    let tails: Vec<Vec<u8>> = vec![
        vec![0; 4096], // preallocated space
        vec![0; 3],    // less than a header
        (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(), // noise
        garbage_header,
        log_bytes.clone(), // a whole copy: valid batches but offsets that do not continue
    ];
    for tail in tails {
        let mut bytes = log_bytes.clone();
        bytes.extend_from_slice(&tail);
        fs::write(&seg, &bytes).unwrap();
        fs::write(&index, &index_bytes).unwrap();
        drop(Log::open(dir.path(), config(1 << 20)).unwrap());
        assert_eq!(
            fs::read(&seg).unwrap(),
            log_bytes,
            "exactly the tail was cut"
        );
        assert_intact_and_appendable(dir.path(), all);
    }
}

/// Builds a topic of several small segments; returns the number of records.
fn build_sealed(dir: &Path, segment_bytes: u64, batches: u64) -> u64 {
    build_sealed_named(dir, TOPIC, segment_bytes, batches)
}

/// [`build_sealed`] for a topic of its own (its counters are the test's alone).
fn build_sealed_named(dir: &Path, topic: &str, segment_bytes: u64, batches: u64) -> u64 {
    let log = Log::open(dir, config(segment_bytes)).unwrap();
    let t = log.topic_or_create(topic).unwrap();
    for b in 0..batches {
        append_batch(&t, 1 + b % 3);
    }
    let n = t.next_offset();
    log.close().unwrap();
    n
}

fn base_of(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Reads every offset of `t` one by one: each read must be a gap covering it or correct
/// records. Returns how many offsets were readable.
fn read_each_offset_safely(t: &Topic, end: u64) -> u64 {
    read_range_safely(t, 0..end)
}

/// [`read_each_offset_safely`] for the offsets in `range`.
fn read_range_safely(t: &Topic, range: std::ops::Range<u64>) -> u64 {
    let (mut offset, end) = (range.start, range.end);
    let mut readable = 0;
    while offset < end {
        match t.read(offset, 7, 1 << 20) {
            Ok(f) => {
                assert!(
                    !f.records.is_empty(),
                    "no records at {offset} below the end {end}"
                );
                assert!(f.records[0].offset >= offset);
                for (i, r) in f.records.iter().enumerate() {
                    if i > 0 {
                        assert!(r.offset > f.records[i - 1].offset, "offsets go up");
                    }
                    check(r);
                }
                if f.records[0].offset == offset {
                    readable += 1;
                }
                offset += 1;
            }
            Err(LogError::Gap {
                from_offset,
                next_offset,
                ..
            }) => {
                assert!(
                    from_offset <= offset && next_offset > offset,
                    "the gap {from_offset}..{next_offset} covers {offset}"
                );
                offset += 1;
            }
            Err(e) => panic!("read at {offset} failed with something other than a gap: {e}"),
        }
    }
    readable
}

#[test]
fn bit_flips_in_a_sealed_segment_never_yield_wrong_records() {
    let dir = tempfile::tempdir().unwrap();
    let n = build_sealed(dir.path(), 4096, 60);
    let segments = segment_paths(dir.path(), "log");
    assert!(segments.len() >= 4, "{segments:?}");
    let victim = &segments[1];
    let victim_range = base_of(victim)..base_of(&segments[2]);
    let len = fs::metadata(victim).unwrap().len();
    let log = Log::open(dir.path(), config(4096)).unwrap();
    let t = log.topic(TOPIC).unwrap();
    assert_eq!(read_each_offset_safely(&t, n), n);
    let mut detected = 0;
    for pos in 0..len {
        let bit = (pos * 5 % 8) as u8;
        flip(victim, pos, bit);
        let readable = read_range_safely(&t, victim_range.clone());
        if readable < victim_range.end - victim_range.start {
            detected += 1;
        }
        // Records outside the damaged segment are all still there: the neighbours one by
        // one, the rest in one sweep.
        for offset in [victim_range.start - 1, victim_range.end] {
            let f = t.read(offset, 1, 1 << 20).unwrap();
            assert_eq!(f.records[0].offset, offset);
            check(&f.records[0]);
        }
        if pos % 64 == 0 {
            let f = t.read(victim_range.end, 1000, 1 << 20).unwrap();
            assert_eq!(f.next_offset, n);
            f.records.iter().for_each(check);
        }
        flip(victim, pos, bit);
    }
    assert_eq!(
        detected, len,
        "every flip made some record unreadable (never served wrong)"
    );
    // After every flip was undone, everything reads again.
    assert_eq!(read_each_offset_safely(&t, n), n);
    drop(t);
    drop(log);

    // The same with a reopen after the flip, for a sample of positions.
    for pos in (0..len).step_by(97) {
        flip(victim, pos, 3);
        let log = Log::open(dir.path(), config(4096)).unwrap();
        let t = log.topic(TOPIC).unwrap();
        assert_eq!(
            t.next_offset(),
            n,
            "sealed segments are not scanned on open"
        );
        assert!(read_each_offset_safely(&t, n) < n);
        drop(t);
        drop(log);
        flip(victim, pos, 3);
    }
}

/// Reads `t` from `offset` until it ends or meets a gap: (records, the gap if one).
fn read_until_gap(t: &Topic, mut offset: u64) -> (Vec<Record>, Option<LogError>) {
    let mut out = Vec::new();
    loop {
        match t.read(offset, 1000, 1 << 20) {
            Ok(f) if f.records.is_empty() => return (out, None),
            Ok(f) => {
                assert_eq!(f.records[0].offset, offset, "a read never jumps");
                for pair in f.records.windows(2) {
                    assert_eq!(pair[1].offset, pair[0].offset + 1, "a read never jumps");
                }
                offset = f.next_offset;
                out.extend(f.records);
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Asserts that reading `t` from the start gives exactly `0..from`, then the gap
/// `from..next` with `reason`, and that reading on at `next` gives everything up to `end`.
fn assert_gap(t: &Topic, from: u64, next: u64, reason: &str, end: u64) {
    let (before, gap) = read_until_gap(t, 0);
    before.iter().for_each(check);
    assert_eq!(
        before.len() as u64,
        from,
        "every record before the damage is served"
    );
    match gap {
        Some(LogError::Gap {
            from_offset,
            next_offset,
            reason: why,
            topic,
            ..
        }) => {
            assert_eq!(topic, t.name());
            assert_eq!((from_offset, next_offset), (from, next), "the range");
            assert_eq!(why, reason);
        }
        other => panic!("expected a gap at {from}, got {other:?}"),
    }
    // Every offset inside the range is answered with the same gap, never with later records.
    for offset in from..next {
        match t.read(offset, 10, 1 << 20) {
            Err(LogError::Gap {
                from_offset,
                next_offset,
                ..
            }) => assert_eq!((from_offset, next_offset), (from, next)),
            other => panic!("a read at {offset} inside the gap answered {other:?}"),
        }
    }
    let (after, gap) = read_until_gap(t, next);
    assert!(gap.is_none(), "{gap:?}");
    after.iter().for_each(check);
    assert_eq!(after.len() as u64, end - next);
}

fn read_gaps_counted(topic: &str) -> u64 {
    outpost::metrics::global()
        .counter(
            "outpost_log_read_gaps_total",
            "Reads answered with a gap: they started at a lost or damaged range.",
            &[("topic", topic)],
        )
        .get()
}

/// The gap markers the log wrote for `topic`.
fn gap_markers(log: &Log, topic: &str) -> Vec<GapMarker> {
    let Ok(gaps) = log.topic(GAPS_TOPIC) else {
        return Vec::new();
    };
    gaps.read(0, 1000, 1 << 20)
        .unwrap()
        .records
        .iter()
        .map(|r| serde_json::from_slice::<GapMarker>(&r.value).unwrap())
        .filter(|m| m.topic == topic)
        .collect()
}

/// (byte position, base offset) of every batch of a segment file, by walking the length
/// fields of an undamaged file.
fn batch_starts(path: &Path) -> Vec<(u64, u64)> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 44 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let base = u64::from_le_bytes(bytes[pos + 16..pos + 24].try_into().unwrap());
        out.push((pos as u64, base));
        pos += 8 + len;
    }
    assert_eq!(
        pos,
        bytes.len(),
        "the walk ends exactly at the end of the file"
    );
    out
}

#[test]
fn a_sealed_segment_that_lost_its_tail_is_read_up_to_the_loss_then_answers_a_gap_to_the_next_segment(
) {
    let topic = "corruption.lost-tail";
    let dir = tempfile::tempdir().unwrap();
    let n = build_sealed_named(dir.path(), topic, 4096, 40);
    let segments = segment_paths_of(dir.path(), topic, "log");
    let victim = &segments[0];
    let next_base = base_of(&segments[1]);
    let original = fs::read(victim).unwrap();
    let starts = batch_starts(victim);
    let (mid_pos, mid_base) = starts[starts.len() / 2];
    // Cut inside a batch, at a batch boundary, one byte short, and to nothing.
    let cuts = [
        (mid_pos + 10, mid_base),
        (mid_pos, mid_base),
        (original.len() as u64 - 1, starts.last().unwrap().1),
        (0, 0),
    ];
    for (cut, lost_from) in cuts {
        fs::write(victim, &original[..cut as usize]).unwrap();
        let counted = read_gaps_counted(topic);
        let log = Log::open(dir.path(), config(4096)).unwrap();
        let t = log.topic(topic).unwrap();
        assert_gap(&t, lost_from, next_base, REASON_LOST, n);
        assert!(read_gaps_counted(topic) > counted, "the gap is counted");
        let markers = gap_markers(&log, topic);
        assert_eq!(markers.len(), 1, "one marker per range: {markers:?}");
        assert_eq!(
            (markers[0].from_offset, markers[0].to_offset),
            (lost_from, next_base - 1)
        );
        drop(t);
        drop(log);
        let _ = fs::remove_dir_all(dir.path().join(GAPS_TOPIC));
    }
    // Zeros where the tail was (the size survived, the data did not).
    for (pos, base) in [starts[starts.len() / 3], starts[starts.len() / 2]] {
        let mut damaged = original[..pos as usize].to_vec();
        damaged.resize(original.len(), 0);
        fs::write(victim, &damaged).unwrap();
        let log = Log::open(dir.path(), config(4096)).unwrap();
        let t = log.topic(topic).unwrap();
        assert_gap(&t, base, next_base, REASON_LOST, n);
        drop(t);
        drop(log);
        let _ = fs::remove_dir_all(dir.path().join(GAPS_TOPIC));
    }
    fs::write(victim, &original).unwrap();
}

#[test]
fn a_flipped_length_field_in_a_sealed_segment_is_a_gap_never_a_jump() {
    let topic = "corruption.length-field";
    let dir = tempfile::tempdir().unwrap();
    let n = build_sealed_named(dir.path(), topic, 4096, 60);
    let segments = segment_paths_of(dir.path(), topic, "log");
    assert!(segments.len() >= 4, "{segments:?}");
    let victim = &segments[1];
    let next_base = base_of(&segments[2]);
    let starts = batch_starts(victim);
    let (pos, base) = starts[1];
    // The length grows past the file (read as a batch that runs past the end), grows by one
    // byte or shrinks by one: the checksum covers the length, so each is damage.
    for (byte, bit) in [(6u64, 7u8), (4, 0), (4, 1)] {
        flip(victim, pos + byte, bit);
        let counted = read_gaps_counted(topic);
        let log = Log::open(dir.path(), config(4096)).unwrap();
        let t = log.topic(topic).unwrap();
        let (before, gap) = read_until_gap(&t, 0);
        assert_eq!(before.len() as u64, base, "records up to the damaged batch");
        before.iter().for_each(check);
        match gap {
            Some(LogError::Gap {
                from_offset,
                next_offset,
                ..
            }) => assert_eq!((from_offset, next_offset), (base, next_base)),
            other => panic!("expected a gap at {base}, got {other:?}"),
        }
        assert!(read_gaps_counted(topic) > counted, "the gap is counted");
        let (after, gap) = read_until_gap(&t, next_base);
        assert!(gap.is_none());
        assert_eq!(after.len() as u64, n - next_base);
        drop(t);
        drop(log);
        flip(victim, pos + byte, bit);
    }
}

#[test]
fn a_corrupt_batch_in_the_middle_of_a_sealed_segment_is_a_gap_up_to_the_next_batch_that_verifies() {
    let topic = "corruption.middle-batch";
    let dir = tempfile::tempdir().unwrap();
    let n = build_sealed_named(dir.path(), topic, 64 * 1024, 400);
    let segments = segment_paths_of(dir.path(), topic, "log");
    assert!(segments.len() >= 3, "{segments:?}");
    let victim = &segments[0];
    let index = fs::read(segment_paths_of(dir.path(), topic, "index").remove(0)).unwrap();
    let entries: Vec<(u64, u64)> = index
        .chunks_exact(8)
        .map(|e| {
            (
                u64::from(u32::from_le_bytes(e[0..4].try_into().unwrap())),
                u64::from(u32::from_le_bytes(e[4..8].try_into().unwrap())),
            )
        })
        .collect();
    assert!(entries.len() >= 6, "several index entries: {entries:?}");
    let starts = batch_starts(victim);
    // A batch between the third and fourth index entries: its body gets a flipped bit.
    let (bad_pos, bad_base) = *starts
        .iter()
        .find(|(p, _)| *p > entries[2].1 && *p < entries[3].1)
        .expect("a batch between two index entries");
    let resumes_at = entries[3].0; // base of the segment is 0
    flip(victim, bad_pos + 50, 2);
    let counted = read_gaps_counted(topic);
    let log = Log::open(dir.path(), config(64 * 1024)).unwrap();
    let t = log.topic(topic).unwrap();
    assert_gap(&t, bad_base, resumes_at, REASON_DAMAGED, n);
    assert!(read_gaps_counted(topic) > counted, "the gap is counted");
    let markers = gap_markers(&log, topic);
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert_eq!(markers[0].reason, REASON_DAMAGED);
    assert_eq!(
        (markers[0].from_offset, markers[0].to_offset),
        (bad_base, resumes_at - 1)
    );
}

#[test]
fn a_deleted_middle_segment_file_is_a_gap_after_a_restart() {
    let topic = "corruption.deleted-segment";
    let dir = tempfile::tempdir().unwrap();
    let n = build_sealed_named(dir.path(), topic, 4096, 60);
    let segments = segment_paths_of(dir.path(), topic, "log");
    assert!(segments.len() >= 4, "{segments:?}");
    let (gone, next) = (base_of(&segments[1]), base_of(&segments[2]));
    fs::remove_file(&segments[1]).unwrap();
    let _ = fs::remove_file(segments[1].with_extension("index"));
    let counted = read_gaps_counted(topic);
    let log = Log::open(dir.path(), config(4096)).unwrap();
    let t = log.topic(topic).unwrap();
    assert_eq!(t.next_offset(), n);
    assert_gap(&t, gone, next, REASON_LOST, n);
    assert!(read_gaps_counted(topic) > counted, "the gap is counted");
    assert_eq!(gap_markers(&log, topic).len(), 1);
}

#[test]
fn missing_or_wrong_index_files_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let n = build_sealed(dir.path(), 32 * 1024, 400);
    let indexes = segment_paths(dir.path(), "index");
    assert!(indexes.len() >= 4, "{indexes:?}");
    let originals: Vec<Vec<u8>> = indexes.iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(
        originals[..originals.len() - 1]
            .iter()
            .all(|b| b.len() >= 5 * 8),
        "several entries per sealed index"
    );
    // Sealed: one missing, one garbage, one plausible but wrong; active: missing.
    fs::remove_file(&indexes[0]).unwrap();
    fs::write(&indexes[1], [0x5a; 77]).unwrap();
    // The third entry's position moved one byte into its batch: still increasing, but wrong.
    let mut wrong = originals[2].clone();
    let pos_field = 2 * 8 + 4;
    let mut p = [0u8; 4];
    p.copy_from_slice(&wrong[pos_field..pos_field + 4]);
    let moved = u32::from_le_bytes(p) + 1;
    wrong[pos_field..pos_field + 4].copy_from_slice(&moved.to_le_bytes());
    fs::write(&indexes[2], &wrong).unwrap();
    let active = indexes.len() - 1;
    fs::remove_file(&indexes[active]).unwrap();

    let log = Log::open(dir.path(), config(32 * 1024)).unwrap();
    let t = log.topic(TOPIC).unwrap();
    assert_eq!(t.next_offset(), n);
    for offset in 0..n {
        let f = t.read(offset, 1, 1 << 20).unwrap();
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.records[0].offset, offset);
        check(&f.records[0]);
    }
    for (i, path) in indexes.iter().enumerate() {
        if [0, 1, 2, active].contains(&i) {
            assert_eq!(
                fs::read(path).unwrap(),
                originals[i],
                "index {} was rebuilt as before",
                path.display()
            );
        }
    }
}
