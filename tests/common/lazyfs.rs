//! The power-cut file system for tests: `tests/peers/lazyfs.py` (FUSE, through mfusepy and
//! libfuse 3) mounted over a backing directory. It passes everything through and remembers
//! what was not fsynced; [`LazyFs::crash`] then drops it, file by file and directory entry by
//! directory entry, as a power cut would (the peer's module doc is the model), and
//! [`LazyFs::fail`] makes a chosen write or fsync fail with EIO or ENOSPC.
//!
//! A mount lives for one "power-on": crash it, [`LazyFs::unmount`] it, and [`LazyFs::mount`]
//! a new one on the same backing directory, which starts with everything durable.
//!
//! When FUSE cannot mount here (no `/dev/fuse`, no libfuse 3, no mfusepy in the venv, not
//! allowed to mount) [`LazyFs::available`] says why and a test skips, unless
//! `OUTPOST_REQUIRE_PEERS` is set (CI, `tests/run.sh`), where it fails instead.
//! Used as `crate::common::lazyfs`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::python::{peer_script, python};

fn required() -> bool {
    std::env::var_os("OUTPOST_REQUIRE_PEERS").is_some_and(|v| !v.is_empty())
}

/// What a power cut keeps of the writes that were not fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing: every file is back to what its last fsync covered.
    Drop,
    /// A random part (seeded): sizes between synced and current, each 512-byte sector of a
    /// dirty page new, old or zeros. Torn writes and garbage tails.
    Torn(u64),
}

/// One mount of the power-cut file system; unmounted on drop.
#[derive(Debug)]
pub struct LazyFs {
    python: PathBuf,
    pub backing: PathBuf,
    pub mount: PathBuf,
    control: PathBuf,
    child: Option<Child>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl LazyFs {
    /// The venv's python when FUSE can mount here, or `None` (with the reason printed) when
    /// `test` should skip. Panics when `OUTPOST_REQUIRE_PEERS` is set and it cannot.
    pub fn available(test: &str) -> Option<PathBuf> {
        let python = python(test)?;
        let problem = if !Path::new("/dev/fuse").exists() {
            Some("/dev/fuse does not exist".to_string())
        } else {
            let probe = Command::new(&python)
                .args(["-c", "import mfusepy"])
                .output();
            match probe {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(format!(
                    "`import mfusepy` failed in the venv: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Some(format!("cannot run {}: {e}", python.display())),
            }
        };
        match problem {
            None => Some(python),
            Some(why) if required() => panic!(
                "{test}: OUTPOST_REQUIRE_PEERS is set but FUSE cannot be used: {why}; \
                 tests/run.sh installs libfuse3 and mfusepy"
            ),
            Some(why) => {
                eprintln!("SKIPPED {test}: {why} (tests/run.sh installs libfuse3 and mfusepy)");
                None
            }
        }
    }

    /// Mounts the file system at `mount` over `backing` (both directories must exist; `mount`
    /// empty). `Err` with the peer's stderr when it did not mount within 30 s.
    pub fn mount(python: &Path, backing: &Path, mount: &Path) -> Result<LazyFs, String> {
        let control = mount.with_extension("lazyfs-ctl");
        let mut child = Command::new(python)
            .arg("-u")
            .arg(peer_script("lazyfs.py"))
            .arg("--backing")
            .arg(backing)
            .arg("--mount")
            .arg(mount)
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start lazyfs.py: {e}"))?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let stderr = std::sync::Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut text = stderr.lock().unwrap_or_else(|e| e.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut fs = LazyFs {
            python: python.to_path_buf(),
            backing: backing.to_path_buf(),
            mount: mount.to_path_buf(),
            control,
            child: Some(child),
            stderr,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line == "MOUNTED" => {}
            other => {
                fs.unmount();
                return Err(format!(
                    "lazyfs did not mount within 30 s ({other:?}); stderr:\n{}",
                    fs.stderr()
                ));
            }
        }
        // The control socket is bound before the mount starts, so it answers now.
        fs.command("stats")?;
        Ok(fs)
    }

    /// The same backing directory and mount point, mounted afresh.
    pub fn remount(&mut self) -> Result<(), String> {
        self.unmount();
        let fresh = LazyFs::mount(&self.python, &self.backing, &self.mount)?;
        *self = fresh;
        Ok(())
    }

    /// Sends one control command and returns the answer line (`Err` for `ERR …` answers and
    /// transport errors).
    pub fn command(&self, line: &str) -> Result<String, String> {
        let talk = || -> std::io::Result<String> {
            let mut stream = UnixStream::connect(&self.control)?;
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            stream.write_all(format!("{line}\n").as_bytes())?;
            let mut answer = String::new();
            BufReader::new(stream).read_line(&mut answer)?;
            Ok(answer.trim().to_string())
        };
        match talk() {
            Ok(answer) if answer.starts_with("ERR") || answer.is_empty() => {
                Err(format!("lazyfs `{line}`: {answer:?}"))
            }
            Ok(answer) => Ok(answer),
            Err(e) => Err(format!("lazyfs `{line}`: {e}; stderr:\n{}", self.stderr())),
        }
    }

    /// The power cut: drops what was not durable (see [`Cut`]). The mount answers EIO to
    /// everything afterwards; unmount or remount it.
    pub fn crash(&self, cut: Cut) -> Result<String, String> {
        match cut {
            Cut::Drop => self.command("crash drop"),
            Cut::Torn(seed) => self.command(&format!("crash torn {seed}")),
        }
    }

    /// Makes the next `count` `kind` (`write` or `fsync`) calls on files whose path in the
    /// mount matches `glob` fail with `errno` (`EIO` or `ENOSPC`).
    pub fn fail(&self, kind: &str, glob: &str, errno: &str, count: u32) -> Result<(), String> {
        self.command(&format!("fail {kind} {glob} {errno} {count}"))
            .map(drop)
    }

    /// A `key=value` figure of `stats`.
    pub fn stat(&self, key: &str) -> Option<u64> {
        let stats = self.command("stats").ok()?;
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }

    /// What the peer wrote to stderr.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Unmounts (the peer unmounts on `exit`; a peer that does not answer is killed and the
    /// mount is detached with `umount -l`).
    pub fn unmount(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let asked = self.command("exit").is_ok();
        let exited = asked
            && super::wait::wait_until(
                Duration::from_secs(20),
                || child.try_wait().ok().flatten().is_some(),
                |done| *done,
            )
            .is_ok();
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mount) {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

/// Whether something is mounted at `path` (per /proc/self/mounts).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m == want)
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- lazyfs stderr ---\n{}", self.stderr());
        }
        self.unmount();
    }
}
