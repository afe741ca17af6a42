//! Crash test of the state store: a child process commits (offsets, state) pairs in a loop and
//! syncs every few commits; the parent kills it with SIGKILL at a random moment, reopens the
//! store and checks that offsets and state rolled back together and never behind a sync the
//! child reported.
//!
//! The child is this test binary itself, re-run with `--exact` on the same test and an
//! environment variable naming the store directory.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use outpost::state::{Commit, StateOp, StateStore};

const CHILD_ENV: &str = "OUTPOST_STATE_DURABILITY_CHILD_DIR";
const TEST_NAME: &str = "state_and_offsets_roll_back_together_after_kill_nine";
const CONSUMER: &str = "plugin:counter";
const NAMESPACE: &str = "counter";
const SYNC_EVERY: u64 = 25;
const CYCLES: usize = 10;

/// The state a consumer keeps: the offset it processed last, as committed alongside the offset.
fn decode(raw: &[u8]) -> u64 {
    u64::from_be_bytes(raw.try_into().expect("state value is 8 bytes"))
}

/// Child side: resumes where the store says and commits forever.
fn run_child(dir: &str) -> ! {
    let store = StateStore::open(std::path::Path::new(dir)).expect("child opens the store");
    let mut next = store.offset(CONSUMER, "in.a").expect("offset").unwrap_or(0);
    let mut out = std::io::stdout().lock();
    writeln!(out, "started {next}").expect("stdout");
    out.flush().expect("stdout");
    loop {
        // Processing input `next` moves both topics' offsets to next + 1 and records `next`
        // twice in state; a torn commit would show as a mismatch between any of the four.
        let commit = Commit {
            consumer: CONSUMER.to_string(),
            offsets: vec![
                ("in.a".to_string(), next + 1),
                ("in.b".to_string(), next + 1),
            ],
            namespace: NAMESPACE.to_string(),
            ops: vec![
                StateOp::Put {
                    key: b"last".to_vec(),
                    value: next.to_be_bytes().to_vec(),
                },
                StateOp::Put {
                    key: b"last-copy".to_vec(),
                    value: next.to_be_bytes().to_vec(),
                },
                StateOp::Put {
                    key: format!("seen/{}", next % 64).into_bytes(),
                    value: next.to_be_bytes().to_vec(),
                },
            ],
        };
        store.commit(&commit).expect("commit");
        next += 1;
        if next % SYNC_EVERY == 0 {
            store.sync().expect("sync");
            writeln!(out, "synced {next}").expect("stdout");
            out.flush().expect("stdout");
        }
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .expect("read /dev/urandom");
    u64::from_ne_bytes(bytes)
}

#[test]
fn state_and_offsets_roll_back_together_after_kill_nine() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        run_child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // The highest offset a child reported as synced, over all cycles so far.
    let mut synced_floor = 0u64;
    let mut total_commits_seen = 0u64;
    for cycle in 0..CYCLES {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                &crate::common::test_name(module_path!(), TEST_NAME),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("synced ") {
                    let _ = tx.send(n.trim().parse().unwrap());
                }
            }
        });
        // Wait for the first sync so every cycle does some work, then a random 20–270 ms more.
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("cycle {cycle}: the child never reported a sync"));
        let kill_after = Duration::from_millis(20 + random_u64() % 250);
        let started = Instant::now();
        std::thread::sleep(kill_after);
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        let last_synced = rx.try_iter().last().unwrap_or(first).max(first);
        synced_floor = synced_floor.max(last_synced);

        let store = StateStore::open(dir.path()).unwrap();
        let a = store
            .offset(CONSUMER, "in.a")
            .unwrap()
            .expect("offset of in.a");
        let b = store
            .offset(CONSUMER, "in.b")
            .unwrap()
            .expect("offset of in.b");
        let last = decode(&store.get(NAMESPACE, b"last").unwrap().expect("state last"));
        let copy = decode(
            &store
                .get(NAMESPACE, b"last-copy")
                .unwrap()
                .expect("state copy"),
        );
        let seen = decode(
            &store
                .get(NAMESPACE, format!("seen/{}", last % 64).as_bytes())
                .unwrap()
                .expect("state seen"),
        );
        assert_eq!(a, b, "cycle {cycle}: the two offsets of one commit differ");
        assert_eq!(
            last,
            a - 1,
            "cycle {cycle}: state and offset are from different commits"
        );
        assert_eq!(
            copy, last,
            "cycle {cycle}: a commit's state ops were applied in part"
        );
        assert_eq!(
            seen, last,
            "cycle {cycle}: a commit's state ops were applied in part"
        );
        assert!(
            a >= synced_floor,
            "cycle {cycle}: offset {a} is older than the synced {synced_floor}"
        );
        eprintln!(
            "cycle {cycle}: killed after {:?}, last synced {last_synced}, recovered offset {a}",
            started.elapsed()
        );
        total_commits_seen = a;
        drop(store);
    }
    assert!(total_commits_seen >= SYNC_EVERY * CYCLES as u64);
}
