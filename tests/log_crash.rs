//! The kill -9 crash tests of the log store.
//!
//! A child process (this test binary run again, selecting the ignored test
//! `crash_child_appends_until_killed` and switched on by environment variables) opens the log
//! on a directory it is given, appends batches from several threads and prints one line
//! `ack <first offset> <thread> <seq> <count>` per acknowledged append. The parent starts the
//! child on the same directory cycle after cycle (state accumulates, so every open is also a
//! reopen after a crash), kills it with SIGKILL at a random moment, reopens the log in-process
//! and checks it:
//!
//! - the log opens, offsets start at 0 and are dense up to `next_offset`;
//! - every record is a byte-exact copy (key, value, headers, timestamp) of a record some child
//!   produced: contents are derived from `(cycle, thread, seq, index)`, so the parent recomputes
//!   the exact bytes; whole batches only, contiguous, none twice;
//! - a thread's batches appear in the order the thread appended them, without holes;
//! - every acknowledged batch of every cycle so far sits at its acknowledged offset;
//! - what an earlier cycle verified is still there unchanged;
//! - the topic accepts a new append afterwards.
//!
//! Kill moments vary: during start-up and recovery, at a random delay after the child is
//! appending, and right when a new file appears in the data directory (a segment roll, with
//! 64 KiB segments so rolls are frequent). `OUTPOST_CRASH_CYCLES` sets the number of cycles of
//! the `always` test (default 50; the interval test runs half as many) and
//! `OUTPOST_CRASH_SEED` replays a run (the seed is printed on failure).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost::log::{FsyncPolicy, Log, LogConfig, NamedFsync, NewRecord, Record, TopicConfig};

/// Name of the ignored test that is the child process.
const CHILD_TEST: &str = "crash_child_appends_until_killed";
/// The data directory of the child; its presence switches the child on.
const ENV_DIR: &str = "OUTPOST_CRASH_CHILD_DIR";
/// `always` or `interval:<ms>`.
const ENV_POLICY: &str = "OUTPOST_CRASH_CHILD_POLICY";
/// The topic the child appends to.
const ENV_TOPIC: &str = "OUTPOST_CRASH_CHILD_TOPIC";
/// The cycle number, part of every record's identity.
const ENV_CYCLE: &str = "OUTPOST_CRASH_CHILD_CYCLE";
/// Base of the records' timestamps.
const ENV_TS_BASE: &str = "OUTPOST_CRASH_CHILD_TS_BASE";

/// Appending threads in the child.
const CHILD_THREADS: u64 = 4;
/// The "thread" number of the batch the parent appends after each verification.
const PARENT_THREAD: u64 = 99;
/// Small segments so that rolls happen every few dozen batches.
const SEGMENT_BYTES: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Deterministic contents
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, and good enough to derive contents and kill moments.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    fn bytes(&mut self, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        while (out.len() as u64) < len {
            let word = self.next_u64().to_le_bytes();
            let take = (len as usize - out.len()).min(8);
            out.extend_from_slice(&word[..take]);
        }
        out
    }
}

/// Which append a batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BatchId {
    cycle: u64,
    thread: u64,
    seq: u64,
}

/// The exact batch that `(cycle, thread, seq)` appends: 1 to 8 records, values from a few bytes
/// to 40 KB (so a batch can be larger than a segment), keys absent, empty or binary, up to three
/// headers with binary values.
fn batch(id: BatchId, ts_base: u64) -> Vec<NewRecord> {
    let mut rng = Rng::new(
        id.cycle
            .wrapping_mul(0x1000_0000_01b3)
            .wrapping_add(id.thread.wrapping_mul(0x9e37_79b9))
            .wrapping_add(id.seq.wrapping_mul(0x85eb_ca6b))
            ^ 0x5eed,
    );
    let count = 1 + rng.below(8);
    (0..count)
        .map(|index| {
            let mut value =
                format!("c{}-t{}-s{}-i{};", id.cycle, id.thread, id.seq, index).into_bytes();
            let padding = match rng.below(40) {
                0 => rng.below(40_000),
                1..=6 => rng.below(6_000),
                _ => rng.below(300),
            };
            value.extend(rng.bytes(padding));
            let key = match rng.below(4) {
                0 => None,
                1 => Some(Vec::new()),
                _ => {
                    let len = 1 + rng.below(40);
                    Some(rng.bytes(len))
                }
            };
            let headers = (0..rng.below(4))
                .map(|h| {
                    let name = format!("h{h}-{}", rng.below(1000));
                    let len = rng.below(64);
                    (name, rng.bytes(len))
                })
                .collect();
            NewRecord {
                key,
                value,
                headers,
                timestamp_ms: Some(ts_base + id.cycle * 1_000_000 + id.seq),
            }
        })
        .collect()
}

/// Reads the identity `(batch, index)` back from a value's `c…-t…-s…-i…;` prefix.
fn identity(value: &[u8]) -> Option<(BatchId, u64)> {
    let end = value.iter().position(|&b| b == b';')?;
    let prefix = std::str::from_utf8(&value[..end]).ok()?;
    let mut parts = prefix.split('-');
    let mut field = |tag: char| -> Option<u64> { parts.next()?.strip_prefix(tag)?.parse().ok() };
    let cycle = field('c')?;
    let thread = field('t')?;
    let seq = field('s')?;
    let index = field('i')?;
    Some((BatchId { cycle, thread, seq }, index))
}

fn crash_log_config(policy: FsyncPolicy) -> LogConfig {
    LogConfig {
        // The temp dir's file system may be small on CI; the budget is not what is tested here.
        min_free_bytes: 1024 * 1024,
        default_topic: TopicConfig {
            fsync: policy,
            segment_bytes: SEGMENT_BYTES,
            // Timestamps are synthetic: retention by age must not delete anything.
            retention_ms: 0,
            retention_bytes: 0,
            ..TopicConfig::default()
        },
        ..LogConfig::default()
    }
}

fn policy_to_env(policy: FsyncPolicy) -> String {
    match policy {
        FsyncPolicy::Named(NamedFsync::Always) => "always".into(),
        FsyncPolicy::Named(NamedFsync::Never) => "never".into(),
        FsyncPolicy::Interval { interval_ms } => format!("interval:{interval_ms}"),
    }
}

fn policy_from_env(text: &str) -> Option<FsyncPolicy> {
    match text {
        "always" => Some(FsyncPolicy::Named(NamedFsync::Always)),
        "never" => Some(FsyncPolicy::Named(NamedFsync::Never)),
        other => {
            let ms = other.strip_prefix("interval:")?.parse().ok()?;
            Some(FsyncPolicy::Interval { interval_ms: ms })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child
// ---------------------------------------------------------------------------------------------

/// Runs only when started by the crash tests (they set `OUTPOST_CRASH_CHILD_DIR`); run by hand
/// without it, it has nothing to do and returns.
#[test]
#[ignore = "the child process of the kill -9 crash tests; they start it themselves"]
fn crash_child_appends_until_killed() {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        eprintln!("{ENV_DIR} is not set: this test is the crash tests' child process");
        return;
    };
    let env =
        |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("the crash child needs {name}"));
    let policy = policy_from_env(&env(ENV_POLICY)).expect("a valid policy in the environment");
    let topic_name = env(ENV_TOPIC);
    let cycle: u64 = env(ENV_CYCLE).parse().expect("a numeric cycle");
    let ts_base: u64 = env(ENV_TS_BASE).parse().expect("a numeric timestamp base");

    // A panic in any appending thread ends the whole child, so the parent sees it.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(6);
    }));
    let log = match Log::open(Path::new(&dir), crash_log_config(policy)) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("crash child: opening the log failed: {e}");
            std::process::exit(3);
        }
    };
    let topic = match log.topic_or_create(&topic_name) {
        Ok(topic) => topic,
        Err(e) => {
            eprintln!("crash child: opening the topic failed: {e}");
            std::process::exit(3);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready {}", topic.next_offset());
        let _ = out.flush();
    }
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|thread| {
            let topic = topic.clone();
            std::thread::spawn(move || {
                for seq in 0.. {
                    let records = batch(BatchId { cycle, thread, seq }, ts_base);
                    let count = records.len() as u64;
                    match topic.append(records) {
                        Ok(ack) if ack.last_offset + 1 == ack.first_offset + count => {
                            let mut out = std::io::stdout().lock();
                            let _ =
                                writeln!(out, "ack {} {thread} {seq} {count}", ack.first_offset);
                            let _ = out.flush();
                        }
                        Ok(ack) => {
                            eprintln!("crash child: {count} records acknowledged as {ack:?}");
                            std::process::exit(4);
                        }
                        Err(e) => {
                            eprintln!("crash child: thread {thread} seq {seq}: append failed: {e}");
                            std::process::exit(5);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

// ---------------------------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------------------------

/// One acknowledged append as printed by the child.
#[derive(Debug, Clone, Copy)]
struct Ack {
    first_offset: u64,
    id: BatchId,
    count: u64,
}

/// When the parent kills the child.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after the start, whatever the child is doing (often open and recovery).
    AfterSpawn(Duration),
    /// This long after the child said it is ready (appending).
    AfterReady(Duration),
    /// As soon as a new file appears in the data directory after the child is ready: a roll.
    OnNewFile,
}

/// What the parent learned from one child run.
struct ChildRun {
    acks: Vec<Ack>,
    /// A new file was seen before the kill in [`KillAt::OnNewFile`] mode.
    killed_on_roll: bool,
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                count_files(&path)
            } else {
                1
            }
        })
        .sum()
}

fn parse_ack(line: &str, cycle: u64) -> Option<Ack> {
    let mut words = line.strip_prefix("ack ")?.split(' ');
    let mut next = || -> Option<u64> { words.next()?.parse().ok() };
    let first_offset = next()?;
    let thread = next()?;
    let seq = next()?;
    let count = next()?;
    Some(Ack {
        first_offset,
        id: BatchId { cycle, thread, seq },
        count,
    })
}

/// Starts the child on `dir`, kills it with SIGKILL at `kill_at`, and returns its acks. Only
/// complete lines count: the kill may cut the last one.
fn run_child(
    dir: &Path,
    policy: FsyncPolicy,
    topic: &str,
    cycle: u64,
    ts_base: u64,
    kill_at: KillAt,
) -> Result<ChildRun, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .args([
            "--exact",
            &crate::common::test_name(module_path!(), CHILD_TEST),
            "--nocapture",
            "--ignored",
        ])
        .env(ENV_DIR, dir)
        .env(ENV_POLICY, policy_to_env(policy))
        .env(ENV_TOPIC, topic)
        .env(ENV_CYCLE, cycle.to_string())
        .env(ENV_TS_BASE, ts_base.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let started = Instant::now();

    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                // A line without its newline was cut by the kill: ignore it.
                Ok(_) if line.last() != Some(&b'\n') => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if line_tx.send(text).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stderr = child.stderr.take().ok_or("the child has no stderr")?;
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut lines = Vec::new();
    let mut killed_on_roll = false;
    let ready_by = Instant::now() + Duration::from_secs(60);
    let wait_ready = |lines: &mut Vec<String>| -> bool {
        while let Ok(line) =
            line_rx.recv_timeout(ready_by.saturating_duration_since(Instant::now()))
        {
            let ready = line.starts_with("ready ");
            lines.push(line);
            if ready {
                return true;
            }
        }
        false
    };
    let mut early_exit = false;
    match kill_at {
        KillAt::AfterSpawn(delay) => {
            std::thread::sleep(delay.saturating_sub(started.elapsed()));
        }
        KillAt::AfterReady(delay) => {
            if wait_ready(&mut lines) {
                std::thread::sleep(delay);
            } else {
                early_exit = true;
            }
        }
        KillAt::OnNewFile => {
            let before = count_files(dir);
            if wait_ready(&mut lines) {
                let files = count_files(dir).max(before);
                let give_up = Instant::now() + Duration::from_secs(3);
                while Instant::now() < give_up {
                    if count_files(dir) > files {
                        killed_on_roll = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            } else {
                early_exit = true;
            }
        }
    }
    let already_exited = child
        .try_wait()
        .map_err(|e| format!("try_wait: {e}"))?
        .is_some();
    // `Child::kill` sends SIGKILL on Unix.
    let _ = child.kill();
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the child: {e}"))?;
    let _ = reader.join();
    lines.extend(line_rx.try_iter());
    let stderr_text = stderr_reader.join().unwrap_or_default();
    if early_exit || already_exited || status.signal() != Some(libc::SIGKILL) {
        return Err(format!(
            "the child did not run until killed (status {status:?}); its stderr:\n{stderr_text}"
        ));
    }
    let acks = lines
        .iter()
        .filter(|line| line.starts_with("ack "))
        .map(|line| parse_ack(line, cycle).ok_or_else(|| format!("malformed ack line {line:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ChildRun {
        acks,
        killed_on_roll,
    })
}

/// What the parent knows across cycles.
#[derive(Default)]
struct Expected {
    /// Every acknowledged batch so far, by first offset.
    acked: BTreeMap<u64, (BatchId, u64)>,
    /// The identities of the records verified at the end of the previous cycle, in order.
    verified: Vec<(BatchId, u64)>,
}

fn same_record(stored: &Record, wanted: &NewRecord) -> bool {
    stored.key == wanted.key
        && stored.value == wanted.value
        && stored.headers == wanted.headers
        && Some(stored.timestamp_ms) == wanted.timestamp_ms
}

/// Reopens the log and checks everything listed in the module doc; then appends one batch.
fn verify(
    dir: &Path,
    policy: FsyncPolicy,
    topic_name: &str,
    cycle: u64,
    ts_base: u64,
    expected: &mut Expected,
) -> Result<(), String> {
    let log = Log::open(dir, crash_log_config(policy))
        .map_err(|e| format!("reopening the log failed: {e}"))?;
    let topic = log
        .topic_or_create(topic_name)
        .map_err(|e| format!("opening the topic failed: {e}"))?;
    if topic.start_offset() != 0 {
        return Err(format!("start offset is {}, not 0", topic.start_offset()));
    }
    let end = topic.next_offset();

    // Read everything; offsets must be dense from 0.
    let mut records = Vec::new();
    while (records.len() as u64) < end {
        let from = records.len() as u64;
        let fetch = topic
            .read(from, 1_000, 4 * 1024 * 1024)
            .map_err(|e| format!("reading at offset {from} failed: {e}"))?;
        if fetch.records.is_empty() {
            return Err(format!(
                "read at {from} returned nothing below next_offset {end}"
            ));
        }
        for record in fetch.records {
            let want = records.len() as u64;
            if record.offset != want {
                return Err(format!(
                    "offset {} where {want} was expected",
                    record.offset
                ));
            }
            records.push(record);
        }
        if fetch.next_offset != records.len() as u64 {
            return Err(format!(
                "fetch next_offset {} after {} records",
                fetch.next_offset,
                records.len()
            ));
        }
    }

    // Every record is an exact copy of a produced one, in whole, contiguous batches, each once,
    // and each thread's batches in sequence without holes.
    let mut identities = Vec::with_capacity(records.len());
    let mut seen = BTreeSet::new();
    let mut next_seq: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut at = 0usize;
    while at < records.len() {
        let offset = at as u64;
        let (id, index) = identity(&records[at].value)
            .ok_or_else(|| format!("offset {offset}: a record no child produced"))?;
        if index != 0 {
            return Err(format!(
                "offset {offset}: {id:?} starts at record {index}, not 0"
            ));
        }
        if !seen.insert(id) {
            return Err(format!("offset {offset}: batch {id:?} is stored twice"));
        }
        let want_seq = next_seq.entry((id.cycle, id.thread)).or_insert(0);
        if id.seq != *want_seq {
            return Err(format!(
                "offset {offset}: {id:?} follows seq {} of its thread (a hole or reordering)",
                *want_seq as i64 - 1
            ));
        }
        *want_seq += 1;
        let wanted = batch(id, ts_base);
        for (i, want) in wanted.iter().enumerate() {
            let Some(stored) = records.get(at + i) else {
                return Err(format!(
                    "offset {offset}: batch {id:?} of {} records is cut after {i}",
                    wanted.len()
                ));
            };
            if !same_record(stored, want) {
                return Err(format!(
                    "offset {}: record {i} of {id:?} differs from what was appended",
                    at + i
                ));
            }
            identities.push((id, i as u64));
        }
        at += wanted.len();
    }

    // Every acknowledged batch, of this cycle and every earlier one, is at its offset.
    for (&first, &(id, count)) in &expected.acked {
        let ok = (0..count).all(|i| identities.get((first + i) as usize) == Some(&(id, i)));
        if !ok {
            return Err(format!(
                "acknowledged batch {id:?} ({count} records at offset {first}) is missing or \
                 elsewhere; the log ends at {end}"
            ));
        }
    }
    // What the previous cycle verified (and the parent closed cleanly) is unchanged.
    if identities.len() < expected.verified.len()
        || identities[..expected.verified.len()] != expected.verified[..]
    {
        return Err(format!(
            "the {} records verified after the previous cycle changed (now {} records)",
            expected.verified.len(),
            identities.len()
        ));
    }

    // The topic accepts a new append at the end.
    let id = BatchId {
        cycle,
        thread: PARENT_THREAD,
        seq: 0,
    };
    let records = batch(id, ts_base);
    let count = records.len() as u64;
    let ack = topic
        .append(records.clone())
        .map_err(|e| format!("appending after reopen failed: {e}"))?;
    if ack.first_offset != end || ack.last_offset != end + count - 1 {
        return Err(format!(
            "append after reopen at {end} was acknowledged as {ack:?}"
        ));
    }
    let back = topic
        .read(end, count as usize, usize::MAX)
        .map_err(|e| format!("reading the new append failed: {e}"))?;
    if back.records.len() != records.len()
        || !back
            .records
            .iter()
            .zip(&records)
            .all(|(s, w)| same_record(s, w))
    {
        return Err("the batch appended after reopen does not read back".into());
    }
    for i in 0..count {
        identities.push((id, i));
    }
    expected.acked.insert(end, (id, count));
    expected.verified = identities;
    log.close()
        .map_err(|e| format!("closing the log failed: {e}"))?;
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Runs `cycles` kill -9 cycles against one data directory; panics with the seed on failure.
fn crash_cycles(policy: FsyncPolicy, topic: &str, cycles: u64) {
    let seed = env_u64("OUTPOST_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let ts_base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir: PathBuf = tmp.path().join("data");
    let mut rng = Rng::new(seed);
    let mut expected = Expected::default();
    let mut total_acks = 0usize;
    let mut roll_kills = 0usize;
    let started = Instant::now();
    for cycle in 0..cycles {
        let kill_at = match rng.below(4) {
            0 => KillAt::AfterSpawn(Duration::from_millis(5 + rng.below(146))),
            1 => KillAt::OnNewFile,
            _ => KillAt::AfterReady(Duration::from_millis(5 + rng.below(146))),
        };
        let context = format!(
            "{policy:?}, cycle {cycle} of {cycles}, kill {kill_at:?} \
             (replay with OUTPOST_CRASH_SEED={seed})"
        );
        let run = run_child(&dir, policy, topic, cycle, ts_base, kill_at)
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        roll_kills += usize::from(run.killed_on_roll);
        total_acks += run.acks.len();
        for ack in run.acks {
            if let Some(prev) = expected.acked.insert(ack.first_offset, (ack.id, ack.count)) {
                panic!(
                    "{context}: offset {} acknowledged twice: {prev:?} and {ack:?}",
                    ack.first_offset
                );
            }
        }
        verify(&dir, policy, topic, cycle, ts_base, &mut expected)
            .unwrap_or_else(|e| panic!("{context}: {e}"));
    }
    eprintln!(
        "{policy:?}: {cycles} kill -9 cycles in {:.1} s, {total_acks} acknowledged child \
         batches, {roll_kills} kills right at a new file, {} records at the end (seed {seed})",
        started.elapsed().as_secs_f64(),
        expected.verified.len()
    );
    // Guard against a harness that silently tests nothing.
    assert!(
        total_acks as u64 >= cycles,
        "only {total_acks} acknowledged batches in {cycles} cycles (seed {seed})"
    );
}

#[test]
fn acked_records_survive_kill_nine_on_an_always_topic() {
    let cycles = env_u64("OUTPOST_CRASH_CYCLES").unwrap_or(50);
    crash_cycles(
        FsyncPolicy::Named(NamedFsync::Always),
        "crash.always",
        cycles,
    );
}

/// On an `interval_ms` topic an ack does not wait for fsync, so acked records are not durable
/// across power loss. They are across `kill -9`, though: the data was handed to the kernel with
/// `write` before the ack, and the page cache belongs to the kernel, not to the killed process.
/// So the same checks apply, acknowledged records included.
#[test]
fn acked_records_survive_kill_nine_on_an_interval_topic() {
    let cycles = (env_u64("OUTPOST_CRASH_CYCLES").unwrap_or(50) / 2).max(1);
    crash_cycles(
        FsyncPolicy::Interval { interval_ms: 20 },
        "crash.interval",
        cycles,
    );
}

#[test]
fn batch_contents_are_deterministic_and_carry_their_identity() {
    let id = BatchId {
        cycle: 3,
        thread: 2,
        seq: 41,
    };
    let a = batch(id, 1_000);
    assert_eq!(a, batch(id, 1_000));
    assert_ne!(a, batch(BatchId { seq: 42, ..id }, 1_000));
    for (i, record) in a.iter().enumerate() {
        assert_eq!(identity(&record.value), Some((id, i as u64)));
    }
    assert_eq!(identity(b"garbage"), None);
    assert_eq!(
        parse_ack("ack 17 2 41 3", 3).map(|a| (a.first_offset, a.id, a.count)),
        Some((17, id, 3))
    );
    assert!(parse_ack("ack 17 2", 3).is_none());
}
