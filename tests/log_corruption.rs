//! Corruption tests of the log store: torn tails at every byte of the last batch, bit flips in
//! sealed and active segments, zero-filled and garbage tails, lost tails of sealed segments,
//! and missing or wrong index files. Reopening never panics, never serves a wrong record and
//! never loses an earlier good one.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use outpost::log::{
    FsyncPolicy, Log, LogConfig, LogError, NamedFsync, NewRecord, Record, Topic, TopicConfig,
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
    let mut paths: Vec<PathBuf> = fs::read_dir(dir.join(TOPIC))
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
    let log = Log::open(dir, config(segment_bytes)).unwrap();
    let t = log.topic_or_create(TOPIC).unwrap();
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

/// Reads every offset of `t` one by one: each read must be a `Corrupt` error or correct
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
            Err(LogError::Corrupt { .. }) => offset += 1,
            Err(e) => panic!("read at {offset} failed with something other than Corrupt: {e}"),
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

#[test]
fn a_sealed_segment_that_lost_its_tail_is_read_up_to_the_loss_then_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let n = build_sealed(dir.path(), 4096, 40);
    let segments = segment_paths(dir.path(), "log");
    let victim = &segments[0];
    let next_base = base_of(&segments[1]);
    let len = fs::metadata(victim).unwrap().len();
    let original = fs::read(victim).unwrap();
    for cut in [len / 2, len - 1, 0] {
        fs::write(victim, &original[..cut as usize]).unwrap();
        let log = Log::open(dir.path(), config(4096)).unwrap();
        let t = log.topic(TOPIC).unwrap();
        let all = read_all(&t);
        all.iter().for_each(check);
        let lost: Vec<u64> = (0..next_base)
            .filter(|o| !all.iter().any(|r| r.offset == *o))
            .collect();
        assert!(!lost.is_empty(), "records of the lost tail cannot be read");
        assert!(
            lost.iter()
                .all(|o| all.iter().all(|r| r.offset < *o || r.offset >= next_base)),
            "only a tail is lost"
        );
        assert_eq!(
            all.iter().filter(|r| r.offset >= next_base).count() as u64,
            n - next_base
        );
        drop(t);
        drop(log);
    }
    // Zeros where the tail was (the size survived, the data did not): the damaged batch reads
    // as corrupt or is skipped, never as data; the other segments are whole.
    for cut in [len / 3, len / 2 + 1] {
        let mut damaged = original[..cut as usize].to_vec();
        damaged.resize(original.len(), 0);
        fs::write(victim, &damaged).unwrap();
        let log = Log::open(dir.path(), config(4096)).unwrap();
        let t = log.topic(TOPIC).unwrap();
        assert!(read_each_offset_safely(&t, n) < n);
        for offset in next_base..n {
            let f = t.read(offset, 1, 1 << 20).unwrap();
            assert_eq!(f.records[0].offset, offset);
        }
        drop(t);
        drop(log);
    }
    fs::write(victim, &original).unwrap();
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
