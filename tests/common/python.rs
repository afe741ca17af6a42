//! Starting Python test peers (pymodbus, …) from integration tests.
//!
//! The interpreter is the test venv's, given by `OUTPOST_PYTHON` (`tests/run.sh` creates the
//! venv and sets it). When it is unset a peer test skips with a printed reason, unless
//! `OUTPOST_REQUIRE_PEERS` is set (CI), where it fails instead.
//!
//! A [`PythonPeer`] runs one script from `tests/peers/`, collects its stdout lines (scripts
//! print `LISTENING <port>` once ready and may log what they receive), and is killed on drop.
//! Used as `crate::common::python`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The venv's python, or `None` (with the reason printed) when peer tests should skip.
/// Panics when `OUTPOST_REQUIRE_PEERS` is set but `OUTPOST_PYTHON` is not usable.
pub fn python(test: &str) -> Option<PathBuf> {
    let required = std::env::var_os("OUTPOST_REQUIRE_PEERS").is_some_and(|v| !v.is_empty());
    match std::env::var_os("OUTPOST_PYTHON").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.exists(),
                "OUTPOST_PYTHON={} does not exist; run tests/run.sh to create the venv",
                path.display()
            );
            Some(path)
        }
        None if required => panic!(
            "{test}: OUTPOST_REQUIRE_PEERS is set but OUTPOST_PYTHON is not; \
             run tests/run.sh, which creates the peers' venv"
        ),
        None => {
            eprintln!(
                "SKIPPED {test}: OUTPOST_PYTHON is not set (the venv with the Python test peers); \
                 tests/run.sh sets it"
            );
            None
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// The path of a script in `tests/peers/`.
pub fn peer_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/peers")
        .join(name)
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: bool,
}

/// A running peer script; killed (and reaped) on drop.
pub struct PythonPeer {
    child: Option<Child>,
    name: String,
    stdout: Arc<(Mutex<Output>, Condvar)>,
    stderr: Arc<Mutex<String>>,
}

impl std::fmt::Debug for PythonPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonPeer")
            .field("name", &self.name)
            .finish()
    }
}

impl PythonPeer {
    /// Starts `tests/peers/<script>` with `args` and waits (up to 30 s) for a stdout line
    /// starting with `ready_prefix`. Panics with the peer's stderr when it does not come.
    pub fn start(python: &PathBuf, script: &str, args: &[&str], ready_prefix: &str) -> PythonPeer {
        let mut child = Command::new(python)
            .arg("-u")
            .arg(peer_script(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {script}: {e}", python.display()));
        let stdout = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let stdout = Arc::clone(&stdout);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let (lock, cvar) = &*stdout;
                    lock.lock().unwrap().lines.push(line);
                    cvar.notify_all();
                }
                let (lock, cvar) = &*stdout;
                lock.lock().unwrap().closed = true;
                cvar.notify_all();
            });
        }
        if let Some(mut err) = child.stderr.take() {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let peer = PythonPeer {
            child: Some(child),
            name: script.to_string(),
            stdout,
            stderr,
        };
        if peer
            .wait_for_line(|l| l.starts_with(ready_prefix), Duration::from_secs(30))
            .is_none()
        {
            panic!(
                "{script} did not print {ready_prefix:?} within 30 s; stderr:\n{}",
                peer.stderr()
            );
        }
        peer
    }

    /// Waits for a stdout line matching `pred` (among all lines so far); returns it.
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.stdout;
        let mut out = lock.lock().unwrap();
        loop {
            if let Some(line) = out.lines.iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if out.closed || now >= deadline {
                return None;
            }
            out = cvar.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.0.lock().unwrap().lines.clone()
    }

    /// Everything the peer wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Kills the peer (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.stderr());
        }
        self.kill();
    }
}
