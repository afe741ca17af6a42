//! A full file system without a disk budget (`log.max_bytes = 0`, `log.min_free_bytes = 0`):
//! real `ENOSPC` from a small tmpfs mounted for the test. Appends are refused with storage
//! full (never a poisoned topic), nothing acknowledged is lost, appends work again without a
//! restart once space is freed, a log opens on a full file system and serves what it holds,
//! and closing it there succeeds.
//!
//! Mounting needs root (or `CAP_SYS_ADMIN`); where it is not permitted the tests print
//! `SKIPPED` and pass, unless `OUTPOST_REQUIRE_PEERS=1`, which makes them fail.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use outpost::log::{FsyncPolicy, Log, LogConfig, LogError, NamedFsync, NewRecord, TopicConfig};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
pub(crate) struct SmallFs {
    _dir: tempfile::TempDir,
    pub(crate) mnt: PathBuf,
}

impl SmallFs {
    pub(crate) fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { _dir: dir, mnt }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("OUTPOST_REQUIRE_PEERS").as_deref() != Ok("1"),
                    "mounting a small tmpfs failed ({why}) and OUTPOST_REQUIRE_PEERS=1"
                );
                eprintln!("SKIPPED: a full file system needs a small tmpfs, and mounting one is not permitted here ({why}); run as root");
                None
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn config(fsync: NamedFsync) -> LogConfig {
    LogConfig {
        max_bytes: 0,
        min_free_bytes: 0,
        retention_check_ms: 3_600_000,
        default_topic: TopicConfig {
            fsync: FsyncPolicy::Named(fsync),
            segment_bytes: 256 * 1024,
            ..TopicConfig::default()
        },
        ..LogConfig::default()
    }
}

fn record(i: u64) -> NewRecord {
    NewRecord {
        key: Some(format!("k{i}").into_bytes()),
        value: (0..3000u64).map(|j| (i * 7 + j) as u8).collect(),
        headers: Vec::new(),
        timestamp_ms: Some(1_700_000_000_000 + i),
    }
}

/// Fills `path` with a ballast file until the file system refuses; returns its size.
pub(crate) fn fill_with_ballast(path: &Path) -> u64 {
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    written
}

/// Appends one record at a time until the log refuses; returns how many were acknowledged
/// (offsets `first..first + n`) and the refusal.
fn append_until_refused(log: &Log, topic: &str, first: u64) -> (u64, LogError) {
    let t = log.topic_or_create(topic).unwrap();
    let mut i = first;
    loop {
        match t.append(vec![record(i)]) {
            Ok(ack) => {
                assert_eq!(ack.first_offset, i, "offsets stay dense");
                i += 1;
            }
            Err(e) => return (i - first, e),
        }
        assert!(i - first < 100_000, "the small file system never filled up");
    }
}

fn assert_records(log: &Log, topic: &str, end: u64) {
    let t = log.topic(topic).unwrap();
    assert_eq!(t.next_offset(), end);
    let mut next = 0;
    while next < end {
        let f = t.read(next, 100, 1 << 20).unwrap();
        for r in &f.records {
            assert_eq!(r.offset, next);
            assert_eq!(r.value, record(next).value, "record {next} is intact");
            next += 1;
        }
        assert!(!f.records.is_empty());
    }
}

fn appends_on_a_full_file_system(fsync: NamedFsync) {
    let Some(small) = SmallFs::mount("2m") else {
        return;
    };
    let dir = small.mnt.join("log");
    let ballast = small.mnt.join("ballast");
    fs::write(&ballast, vec![0u8; 512 * 1024]).unwrap();
    let topic = "full.disk";
    let log = Log::open(&dir, config(fsync)).unwrap();
    let (acked, refusal) = append_until_refused(&log, topic, 0);
    assert!(acked > 10, "some records fit first: {acked}");
    assert!(
        matches!(refusal, LogError::StorageFull(_)),
        "a full file system is storage full, not {refusal:?}"
    );
    // Refused again (not poisoned), and nothing acknowledged is lost.
    let t = log.topic(topic).unwrap();
    let again = t.append(vec![record(acked)]).unwrap_err();
    assert!(matches!(again, LogError::StorageFull(_)), "{again:?}");
    assert_records(&log, topic, acked);

    // Space comes back: appends go on at once, densely, without a restart.
    fs::remove_file(&ballast).unwrap();
    let ack = t.append(vec![record(acked)]).unwrap();
    assert_eq!(ack.first_offset, acked);
    let (more, refusal) = append_until_refused(&log, topic, acked + 1);
    assert!(more > 10, "{more}");
    assert!(matches!(refusal, LogError::StorageFull(_)), "{refusal:?}");
    let end = acked + 1 + more;
    assert_records(&log, topic, end);

    // Closing on the full file system succeeds: everything acknowledged is stored.
    log.close().unwrap();
    drop(t);
    drop(log);
    let log = Log::open(&dir, config(fsync)).unwrap();
    assert_records(&log, topic, end);
    log.close().unwrap();
}

#[test]
fn appends_on_a_full_file_system_are_storage_full_and_resume_without_restart_on_always_topics() {
    appends_on_a_full_file_system(NamedFsync::Always);
}

#[test]
fn appends_on_a_full_file_system_are_storage_full_and_resume_without_restart_on_never_topics() {
    appends_on_a_full_file_system(NamedFsync::Never);
}

#[test]
fn a_log_opens_on_a_full_file_system_and_serves_what_it_holds() {
    let Some(small) = SmallFs::mount("2m") else {
        return;
    };
    let dir = small.mnt.join("log");
    let topic = "full.at.start";
    {
        let log = Log::open(&dir, config(NamedFsync::Always)).unwrap();
        let t = log.topic_or_create(topic).unwrap();
        for i in 0..20 {
            t.append(vec![record(i)]).unwrap();
        }
        log.close().unwrap();
    }
    let ballast = small.mnt.join("ballast");
    assert!(fill_with_ballast(&ballast) > 0);
    // A configured topic that does not exist yet cannot be created now.
    let mut cfg = config(NamedFsync::Always);
    cfg.topics
        .insert("configured.later".into(), TopicConfig::default());
    let log = Log::open(&dir, cfg).expect("a full file system still opens");
    assert_records(&log, topic, 20);
    let t = log.topic(topic).unwrap();
    let refused = t.append(vec![record(20)]).unwrap_err();
    assert!(matches!(refused, LogError::StorageFull(_)), "{refused:?}");
    match log.topic_or_create("brand.new") {
        Err(LogError::StorageFull(_)) => {}
        Ok(new) => {
            let refused = new.append(vec![record(0)]).unwrap_err();
            assert!(matches!(refused, LogError::StorageFull(_)), "{refused:?}");
        }
        Err(e) => panic!("creating a topic on a full disk: {e:?}"),
    }
    // Closing while full would succeed (see the append tests); here space is freed first and
    // the same log takes appends again, without a restart.
    fs::remove_file(&ballast).unwrap();
    assert_eq!(t.append(vec![record(20)]).unwrap().first_offset, 20);
    assert_records(&log, topic, 21);
    log.close().unwrap();
}
