//! Unit tests of the log as a whole: append, read, roll, retention, guards, budget, durability
//! and visibility rules, through the public API and (where a rule is about timing) the inside.

use super::*;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

fn config(fsync: FsyncPolicy, segment_bytes: u64) -> LogConfig {
    LogConfig {
        min_free_bytes: 0,
        retention_check_ms: 3_600_000,
        default_topic: TopicConfig {
            fsync,
            segment_bytes,
            segment_ms: 3_600_000,
            retention_ms: 0,
            retention_bytes: 0,
        },
        topics: Default::default(),
        ..LogConfig::default()
    }
}

const ALWAYS: FsyncPolicy = FsyncPolicy::Named(NamedFsync::Always);
const NEVER: FsyncPolicy = FsyncPolicy::Named(NamedFsync::Never);

fn value(i: u64, len: usize) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.resize(len, (i % 251) as u8);
    v
}

fn rec(i: u64, len: usize) -> NewRecord {
    NewRecord {
        key: Some(format!("k{i}").into_bytes()),
        value: value(i, len),
        ..Default::default()
    }
}

fn append_n(t: &Topic, n: u64, len: usize) {
    for _ in 0..n {
        let i = t.next_offset();
        t.append(vec![rec(i, len)]).unwrap();
    }
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

fn segment_files(dir: &Path, topic: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(topic))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[derive(Debug, Default)]
struct TestGuard {
    protected: Mutex<Option<u64>>,
    refuse: AtomicBool,
    calls: Mutex<Vec<(String, u64)>>,
}

impl RetentionGuard for TestGuard {
    fn protected_from(&self, _topic: &str) -> Option<u64> {
        *lock(&self.protected)
    }
    fn before_delete(&self, topic: &str, end_offset: u64) -> Result<(), String> {
        lock(&self.calls).push((topic.to_string(), end_offset));
        if self.refuse.load(Ordering::SeqCst) {
            Err("not yet".into())
        } else {
            Ok(())
        }
    }
}

#[test]
fn appended_records_read_back_with_dense_offsets_keys_headers_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(ALWAYS, 1 << 20)).unwrap();
    let t = log.topic_or_create("pos.payments").unwrap();
    let ack = t
        .append(vec![
            NewRecord {
                key: None,
                value: b"a".to_vec(),
                headers: vec![("z".into(), b"1".to_vec()), ("a".into(), b"2".to_vec())],
                timestamp_ms: Some(42),
            },
            NewRecord {
                key: Some(b"k".to_vec()),
                value: b"b".to_vec(),
                ..Default::default()
            },
        ])
        .unwrap();
    assert_eq!(
        ack,
        AppendAck {
            first_offset: 0,
            last_offset: 1
        }
    );
    let ack = t.append(vec![rec(2, 10)]).unwrap();
    assert_eq!(
        ack,
        AppendAck {
            first_offset: 2,
            last_offset: 2
        }
    );
    let all = read_all(&t);
    assert_eq!(
        all.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(all[0].timestamp_ms, 42);
    assert_eq!(
        all[0].headers,
        vec![("z".into(), b"1".to_vec()), ("a".into(), b"2".to_vec())]
    );
    assert_eq!(all[1].key.as_deref(), Some(&b"k"[..]));
    assert!(all[1].timestamp_ms > 1_600_000_000_000, "defaults to now");
    assert_eq!(t.name(), "pos.payments");
    assert_eq!(log.topics().len(), 1);
}

#[test]
fn reads_honour_limits_return_at_least_one_record_and_clamp_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(NEVER, 4096)).unwrap();
    let t = log.topic_or_create("t").unwrap();
    append_n(&t, 30, 300);
    let f = t.read(5, 3, 1 << 20).unwrap();
    assert_eq!(
        f.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    assert_eq!(f.next_offset, 8);
    let f = t.read(5, 100, 10).unwrap();
    assert_eq!(
        f.records.len(),
        1,
        "one record even when it is bigger than max_bytes"
    );
    let f = t.read(5, 100, 1_000).unwrap();
    assert_eq!(
        f.records.len(),
        3,
        "3 records of 303 bytes fit in 1000, 4 do not"
    );
    let f = t.read(10, 100, 1 << 20).unwrap();
    assert_eq!(f.records.len(), 20, "reads cross segment boundaries");
    assert_eq!(f.records[19].value, value(29, 300));
    let f = t.read(500, 10, 1 << 20).unwrap();
    assert!(f.records.is_empty());
    assert_eq!(f.next_offset, 30, "clamped to the visible end");
    let f = t.read(30, 10, 1 << 20).unwrap();
    assert_eq!((f.records.len(), f.next_offset), (0, 30));
    let f = t.read(3, 0, 1 << 20).unwrap();
    assert_eq!((f.records.len(), f.next_offset), (0, 3));
}

#[test]
fn segments_roll_by_size_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(ALWAYS, 4096)).unwrap();
    let t = log.topic_or_create("t").unwrap();
    append_n(&t, 60, 500);
    let files = segment_files(dir.path(), "t");
    assert!(files.len() >= 7, "{files:?}");
    for f in &files {
        let len = std::fs::metadata(dir.path().join("t").join(f))
            .unwrap()
            .len();
        assert!(len <= 4096, "{f} has {len} bytes");
    }
    assert_eq!(t.stats().segments, files.len());
    let all = read_all(&t);
    assert_eq!(all.len(), 60);
    for (i, r) in all.iter().enumerate() {
        assert_eq!((r.offset, &r.value), (i as u64, &value(i as u64, 500)));
    }
}

#[test]
fn segments_roll_by_age_using_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut c = config(NEVER, 1 << 20);
    c.default_topic.segment_ms = 60_000;
    let log = Log::open_with_clock(dir.path(), c, clock.clone()).unwrap();
    let t = log.topic_or_create("t").unwrap();
    append_n(&t, 3, 10);
    clock.advance(59_999);
    append_n(&t, 1, 10);
    assert_eq!(segment_files(dir.path(), "t").len(), 1);
    clock.advance(1);
    append_n(&t, 1, 10);
    assert_eq!(
        segment_files(dir.path(), "t"),
        vec!["00000000000000000000.log", "00000000000000000004.log"]
    );
    // An idle active segment past its age is rolled by the retention pass.
    clock.advance(60_000);
    log.enforce_retention().unwrap();
    assert_eq!(segment_files(dir.path(), "t").len(), 3);
    assert_eq!(read_all(&t).len(), 5);
}

#[test]
fn retention_by_age_deletes_old_sealed_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(10_000_000));
    let mut c = config(NEVER, 4096);
    c.default_topic.retention_ms = 1_000;
    let log = Log::open_with_clock(dir.path(), c, clock.clone()).unwrap();
    let t = log.topic_or_create("t").unwrap();
    append_n(&t, 20, 1000); // several segments, all at t0
    clock.advance(5_000);
    append_n(&t, 10, 1000); // newer segments
    let before = segment_files(dir.path(), "t");
    let report = log.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0);
    let after = segment_files(dir.path(), "t");
    assert_eq!(before.len() - after.len(), report.segments_deleted);
    let start = t.start_offset();
    assert!(start > 0 && start <= 20, "start {start}");
    let f = t.read(0, 1000, 1 << 20).unwrap();
    assert_eq!(f.start_offset, start);
    assert_eq!(
        f.records[0].offset, start,
        "a deleted offset reads from the log start"
    );
    // Everything is old now: all sealed segments go, the active one stays.
    clock.advance(100_000);
    log.enforce_retention().unwrap();
    assert_eq!(segment_files(dir.path(), "t").len(), 1);
    assert_eq!(t.next_offset(), 30);
    append_n(&t, 1, 10);
    assert_eq!(t.next_offset(), 31);
}

#[test]
fn retention_by_bytes_keeps_the_topic_under_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(NEVER, 4096);
    c.default_topic.retention_bytes = 10_000;
    let log = Log::open(dir.path(), c).unwrap();
    let t = log.topic_or_create("t").unwrap();
    append_n(&t, 100, 500);
    let report = log.enforce_retention().unwrap();
    assert!(report.bytes_deleted > 0);
    let stats = t.stats();
    assert!(stats.bytes <= 10_000, "{stats:?}");
    assert!(
        stats.bytes + 4096 > 10_000,
        "no more than needed was deleted: {stats:?}"
    );
    let all = read_all(&t);
    assert_eq!(all.first().map(|r| r.offset), Some(t.start_offset()));
    assert_eq!(all.last().map(|r| r.offset), Some(99));
    assert_eq!(log.total_bytes(), stats.bytes);
}

#[test]
fn retention_guards_protect_offsets_and_can_cancel_a_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(NEVER, 4096);
    c.default_topic.retention_bytes = 1;
    let log = Log::open(dir.path(), c).unwrap();
    let guard = Arc::new(TestGuard::default());
    log.add_retention_guard(guard.clone());
    let t = log.topic_or_create("t").unwrap();
    append_n(&t, 60, 500);
    let bases: Vec<u64> = t.inner.segment_bases();
    assert!(bases.len() >= 5);

    guard.refuse.store(true, Ordering::SeqCst);
    assert_eq!(log.enforce_retention().unwrap(), RetentionReport::default());
    assert_eq!(
        t.start_offset(),
        0,
        "a refusing before_delete cancels the deletion"
    );
    assert_eq!(
        lock(&guard.calls).last().cloned(),
        Some(("t".to_string(), *bases.last().unwrap()))
    );

    guard.refuse.store(false, Ordering::SeqCst);
    *lock(&guard.protected) = Some(bases[2] + 1); // inside the third segment
    let report = log.enforce_retention().unwrap();
    assert_eq!(report.segments_deleted, 2);
    assert_eq!(t.start_offset(), bases[2]);
    assert_eq!(
        lock(&guard.calls).last().cloned(),
        Some(("t".to_string(), bases[2]))
    );

    *lock(&guard.protected) = None;
    log.enforce_retention().unwrap();
    assert_eq!(t.start_offset(), *bases.last().unwrap());
}

#[test]
fn max_bytes_refuses_appends_without_writing_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(NEVER, 4096);
    c.max_bytes = 20_000;
    c.default_topic.retention_bytes = 8_000;
    let log = Log::open(dir.path(), c).unwrap();
    let t = log.topic_or_create("t").unwrap();
    let mut refused = None;
    for _ in 0..100 {
        let next = t.next_offset();
        match t.append(vec![rec(next, 1000)]) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the budget must be hit");
    assert!(matches!(err, LogError::StorageFull(_)), "{err}");
    assert!(
        err.to_string().contains("`log.max_bytes` is 20000"),
        "{err}"
    );
    let next = t.next_offset();
    let bytes = t.stats().bytes;
    assert!(bytes <= 20_000);
    assert!(matches!(
        t.append(vec![rec(0, 1000)]),
        Err(LogError::StorageFull(_))
    ));
    // try_append hands the refused records back, unchanged, for a later retry.
    let batch = vec![rec(7, 1000), rec(8, 10)];
    let failed = t.try_append(batch.clone()).unwrap_err();
    assert!(matches!(failed.error, LogError::StorageFull(_)));
    assert_eq!(failed.records, batch);
    assert_eq!(
        (t.next_offset(), t.stats().bytes),
        (next, bytes),
        "nothing was written"
    );
    // Space comes back (here: retention frees it) and appends work again.
    let report = log.enforce_retention().unwrap();
    assert!(report.bytes_deleted > 0);
    t.append(vec![rec(next, 1000)]).unwrap();
    assert_eq!(t.next_offset(), next + 1);
    let storage_full = metrics::global().counter("outpost_log_storage_full_total", "", &[]);
    assert!(storage_full.get() >= 2);
}

#[test]
fn min_free_bytes_refuses_appends_with_a_message_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(NEVER, 4096);
    c.min_free_bytes = u64::MAX / 2;
    let log = Log::open(dir.path(), c).unwrap();
    let t = log.topic_or_create("t").unwrap();
    let err = t.append(vec![rec(0, 10)]).unwrap_err();
    assert!(err.to_string().contains("`log.min_free_bytes`"), "{err}");
    assert_eq!(t.next_offset(), 0);
}

#[test]
fn records_over_the_limit_and_empty_appends_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(NEVER, 4096);
    c.max_record_bytes = 100;
    let log = Log::open(dir.path(), c).unwrap();
    let t = log.topic_or_create("t").unwrap();
    let big = NewRecord {
        key: Some(vec![1; 50]),
        value: vec![2; 40],
        headers: vec![("h".into(), vec![3; 10])],
        timestamp_ms: None,
    };
    match t.append(vec![rec(0, 10), big]) {
        Err(LogError::RecordTooLarge {
            size: 101,
            limit: 100,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(t.append(vec![]), Err(LogError::EmptyAppend)));
    assert_eq!(t.next_offset(), 0);
    t.append(vec![rec(0, 90)]).unwrap();
}

#[test]
fn topic_names_are_checked_and_creation_follows_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(NEVER, 4096);
    c.auto_create_topics = false;
    c.topics.insert("listed".into(), TopicConfig::default());
    c.topics.insert(
        "sensors.*".into(),
        TopicConfig {
            fsync: NEVER,
            ..TopicConfig::default()
        },
    );
    let log = Log::open(dir.path(), c).unwrap();
    for bad in ["", "Upper", "a/b", "..", "."] {
        assert!(
            matches!(
                log.topic_or_create(bad),
                Err(LogError::InvalidTopicName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        log.topic_or_create(&"x".repeat(129)),
        Err(LogError::InvalidTopicName { .. })
    ));
    assert!(
        log.topic("listed").is_ok(),
        "exactly configured topics exist from the start"
    );
    assert!(matches!(
        log.topic("unknown"),
        Err(LogError::UnknownTopic(_))
    ));
    assert!(matches!(
        log.topic_or_create("unknown"),
        Err(LogError::CreationRefused(_))
    ));
    let t = log.topic_or_create("sensors.fridge").unwrap();
    assert_eq!(t.config().fsync, NEVER);
}

#[test]
fn reopening_keeps_offsets_dense_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), config(ALWAYS, 4096)).unwrap();
        let t = log.topic_or_create("t").unwrap();
        append_n(&t, 25, 700);
        log.close().unwrap();
        assert!(matches!(t.append(vec![rec(0, 1)]), Err(LogError::Closed)));
    }
    let log = Log::open(dir.path(), config(ALWAYS, 4096)).unwrap();
    let t = log.topic("t").unwrap();
    assert_eq!(t.next_offset(), 25);
    append_n(&t, 5, 700);
    drop(log);
    let log = Log::open(dir.path(), config(ALWAYS, 4096)).unwrap();
    let t = log.topic("t").unwrap();
    let all = read_all(&t);
    assert_eq!(all.len(), 30);
    for (i, r) in all.iter().enumerate() {
        assert_eq!((r.offset, &r.value), (i as u64, &value(i as u64, 700)));
    }
}

#[tokio::test]
async fn wait_for_wakes_when_a_record_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(ALWAYS, 1 << 20)).unwrap();
    let t = log.topic_or_create("t").unwrap();
    let started = Instant::now();
    assert_eq!(
        t.wait_for(0, Duration::from_millis(50)).await,
        0,
        "times out when nothing comes"
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
    let waiter = {
        let t = t.clone();
        tokio::spawn(async move { t.wait_for(0, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    t.append_async(vec![rec(0, 5)]).await.unwrap();
    assert_eq!(waiter.await.unwrap(), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        t.wait_for(0, Duration::from_secs(30)).await,
        1,
        "returns at once when already there"
    );
}

/// Holds the group-commit state as if an fsync were in flight, so appends pile up.
fn hold_sync(t: &Topic) {
    t.inner.set_syncing_for_test(true);
}

fn release_sync(t: &Topic) {
    t.inner.set_syncing_for_test(false);
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn always_topics_show_records_to_readers_only_once_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(ALWAYS, 1 << 20)).unwrap();
    let t = log.topic_or_create("t").unwrap();
    hold_sync(&t);
    let appender = {
        let t = t.clone();
        std::thread::spawn(move || t.append(vec![rec(0, 100)]))
    };
    wait_until("the batch is written", || t.inner.ends_for_test().0 == 1);
    assert_eq!(
        t.next_offset(),
        0,
        "the batch is not visible before its fsync"
    );
    assert!(t.read(0, 10, 1 << 20).unwrap().records.is_empty());
    release_sync(&t);
    appender.join().unwrap().unwrap();
    assert_eq!(t.next_offset(), 1);
    assert_eq!(t.read(0, 10, 1 << 20).unwrap().records.len(), 1);

    // A `never` topic shows a record as soon as it is written.
    let mut c = config(NEVER, 1 << 20);
    c.default_topic.fsync = NEVER;
    let dir2 = tempfile::tempdir().unwrap();
    let log2 = Log::open(dir2.path(), c).unwrap();
    let n = log2.topic_or_create("n").unwrap();
    hold_sync(&n);
    n.append(vec![rec(0, 100)]).unwrap();
    assert_eq!(n.next_offset(), 1);
}

#[test]
fn concurrent_appends_on_an_always_topic_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(ALWAYS, 1 << 20)).unwrap();
    let t = log.topic_or_create("group-commit-test").unwrap();
    let fsyncs = || {
        metrics::global()
            .counter(
                "outpost_log_fsyncs_total",
                "",
                &[("topic", "group-commit-test")],
            )
            .get()
    };
    let before = fsyncs();
    hold_sync(&t);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || t.append(vec![rec(i, 50)]))
        })
        .collect();
    wait_until("all 8 batches are written", || {
        t.inner.ends_for_test().0 == 8
    });
    release_sync(&t);
    let mut last_offsets: Vec<u64> = threads
        .into_iter()
        .map(|h| h.join().unwrap().unwrap().last_offset)
        .collect();
    last_offsets.sort_unstable();
    assert_eq!(last_offsets, (0..8).collect::<Vec<_>>());
    assert_eq!(fsyncs() - before, 1, "one fsync covered all eight appends");
}

#[test]
fn interval_topics_are_synced_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        config(FsyncPolicy::Interval { interval_ms: 20 }, 1 << 20),
    )
    .unwrap();
    let t = log.topic_or_create("interval-sync-test").unwrap();
    t.append(vec![rec(0, 10)]).unwrap();
    assert_eq!(t.next_offset(), 1, "visible right after the write");
    wait_until("the background fsync ran", || {
        t.inner.ends_for_test().1 == 1
    });
}

#[test]
fn a_failed_write_poisons_the_topic_but_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(ALWAYS, 1 << 20)).unwrap();
    let t = log.topic_or_create("t").unwrap();
    t.append(vec![rec(0, 10)]).unwrap();
    let read_only = std::fs::File::open(dir.path().join("t/00000000000000000000.log")).unwrap();
    t.inner.replace_file_for_test(read_only);
    assert!(matches!(
        t.append(vec![rec(1, 10)]),
        Err(LogError::Io { .. })
    ));
    assert!(matches!(
        t.append(vec![rec(1, 10)]),
        Err(LogError::Poisoned(_))
    ));
    assert_eq!(read_all(&t).len(), 1);
    assert!(matches!(log.close(), Err(LogError::Poisoned(_))));
}

#[test]
fn stats_report_offsets_bytes_segments_and_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(NEVER, 4096)).unwrap();
    let t = log.topic_or_create("stats-test").unwrap();
    append_n(&t, 40, 300);
    let s = t.stats();
    assert_eq!(
        (s.name.as_str(), s.first_offset, s.next_offset),
        ("stats-test", 0, 40)
    );
    assert!(s.segments >= 3);
    let on_disk: u64 = segment_files(dir.path(), "stats-test")
        .iter()
        .map(|f| {
            std::fs::metadata(dir.path().join("stats-test").join(f))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(s.bytes, on_disk);
    assert!(s.records_per_sec > 0.0);
    let appended = metrics::global().counter(
        "outpost_log_appended_records_total",
        "",
        &[("topic", "stats-test")],
    );
    assert_eq!(appended.get(), 40);
}

#[test]
fn many_threads_appending_and_reading_see_a_consistent_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(ALWAYS, 8192)).unwrap();
    let t = log.topic_or_create("t").unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (t, done, reads) = (t.clone(), done.clone(), reads.clone());
        std::thread::spawn(move || {
            let mut next = 0;
            while !done.load(Ordering::SeqCst) || next < t.next_offset() {
                let f = t.read(next, 100, 1 << 20).unwrap();
                for r in &f.records {
                    assert_eq!(r.offset, next);
                    assert_eq!(r.value.len(), 200);
                    next += 1;
                }
                reads.fetch_add(1, Ordering::SeqCst);
            }
            next
        })
    };
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    t.append(vec![rec(w * 1000 + i, 200)]).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert_eq!(reader.join().unwrap(), 400);
    assert!(reads.load(Ordering::SeqCst) > 0);
}

/// Ranks `bulk*` topics for eviction and never anything else (the gap topic included, which
/// must be spared even by a policy that ranks it).
#[derive(Debug)]
struct TestPolicy;

impl EvictionPolicy for TestPolicy {
    fn rank(&self, topic: &str) -> Option<EvictionRank> {
        (topic.starts_with("bulk") || topic == GAPS_TOPIC).then_some(EvictionRank {
            rank: 0,
            class: "test",
        })
    }
}

fn budget_config(max_bytes: u64) -> LogConfig {
    LogConfig {
        max_bytes,
        ..config(ALWAYS, 4096)
    }
}

fn fill_above_high_water(log: &Log, topic: &str, max_bytes: u64) {
    let t = log.topic_or_create(topic).unwrap();
    while log.total_bytes() <= max_bytes * 9 / 10 {
        let i = t.next_offset();
        t.append(vec![rec(i, 300)]).unwrap();
    }
}

#[test]
fn eviction_ignores_protected_offsets_but_a_refused_before_delete_keeps_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let max = 40_000;
    let log = Log::open(dir.path(), budget_config(max)).unwrap();
    log.set_eviction_policy(Arc::new(TestPolicy));
    let guard = Arc::new(TestGuard::default());
    *lock(&guard.protected) = Some(0);
    guard.refuse.store(true, Ordering::SeqCst);
    log.add_retention_guard(guard.clone());
    fill_above_high_water(&log, "bulk", max);
    let bulk = log.topic("bulk").unwrap();
    let first_end = bulk.inner.segment_bases()[1];

    let report = log.enforce_eviction().unwrap();
    assert_eq!(report.segments_evicted, 0);
    assert!(report.bytes_needed > 0);
    assert_eq!(bulk.start_offset(), 0);
    assert!(lock(&guard.calls).contains(&("bulk".to_string(), first_end)));
    let gaps = log.topic(GAPS_TOPIC).map(|t| t.next_offset()).unwrap_or(0);
    assert_eq!(gaps, 0, "a marker was written for a segment that stayed");

    guard.refuse.store(false, Ordering::SeqCst);
    log.enforce_eviction().unwrap();
    assert!(log.total_bytes() <= max * 8 / 10, "{}", log.total_bytes());
    let start = bulk.start_offset();
    assert!(start >= first_end, "protected_from stopped eviction");
    let markers = read_all(&log.topic(GAPS_TOPIC).unwrap());
    let mut expect = 0;
    for m in &markers {
        let g: GapMarker = serde_json::from_slice(&m.value).unwrap();
        assert_eq!((g.topic.as_str(), g.from_offset), ("bulk", expect));
        expect = g.to_offset + 1;
    }
    assert_eq!(expect, start);
    assert_eq!(read_all(&bulk).first().map(|r| r.offset), Some(start));
    assert_eq!(log.topic(GAPS_TOPIC).unwrap().start_offset(), 0);
}

#[test]
fn a_gap_marker_that_cannot_be_made_durable_cancels_the_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let max = 40_000;
    let log = Log::open(dir.path(), budget_config(max)).unwrap();
    let gaps = log.topic_or_create(GAPS_TOPIC).unwrap();
    let read_only =
        std::fs::File::open(dir.path().join(GAPS_TOPIC).join("00000000000000000000.log")).unwrap();
    gaps.inner.replace_file_for_test(read_only);
    log.set_eviction_policy(Arc::new(TestPolicy));
    fill_above_high_water(&log, "bulk", max);
    assert!(log.enforce_eviction().is_err());
    let bulk = log.topic("bulk").unwrap();
    assert_eq!(bulk.start_offset(), 0);
    assert_eq!(read_all(&bulk).len() as u64, bulk.next_offset());
    // With no marker possible, a full budget refuses instead of losing data silently.
    let refused = loop {
        let i = bulk.next_offset();
        if let Err(e) = bulk.append(vec![rec(i, 300)]) {
            break e;
        }
    };
    assert!(matches!(refused, LogError::StorageFull(_)), "{refused}");
    assert_eq!(bulk.start_offset(), 0);
}

#[test]
fn a_refused_append_evicts_once_and_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let max = 40_000;
    // The high-water mark at 100 %: only the refused append itself can trigger eviction.
    let config = LogConfig {
        eviction_high_water_percent: 100,
        eviction_low_water_percent: 50,
        ..budget_config(max)
    };
    let log = Log::open(dir.path(), config).unwrap();
    log.set_eviction_policy(Arc::new(TestPolicy));
    let bulk = log.topic_or_create("bulk-a").unwrap();
    let critical = log.topic_or_create("critical").unwrap();
    append_n(&bulk, 40, 300);
    let mut n = 0;
    while log.topic(GAPS_TOPIC).is_err() {
        let i = critical.next_offset();
        critical.append(vec![rec(i, 300)]).unwrap();
        n += 1;
        assert!(n < 1_000, "no eviction happened");
    }
    // Everything evictable went (the low-water mark is out of reach), so the append fit.
    assert_eq!(bulk.inner.segment_bases().len(), 1);
    assert!(bulk.start_offset() > 0);
    assert!(log.total_bytes() < max - 8_000, "{}", log.total_bytes());
    assert_eq!(read_all(&critical).len(), n);
    assert_eq!(critical.start_offset(), 0);
}
