//! A real Kafka-compatible broker for the forwarding tests: `tansu` (crates.io), built by
//! `tests/run.sh` into `$OUTPOST_CACHE_DIR/tansu/bin/tansu` (`OUTPOST_TANSU` overrides the
//! path). When the binary is absent a test skips with a printed reason, unless
//! `OUTPOST_REQUIRE_PEERS` is set (CI), where it fails instead.
//!
//! The broker stores its data in SQLite under its own directory, so a stopped broker started
//! again in the same directory keeps every topic and record. tansu 0.6's schema has no index
//! for the lookup of a fetched record's headers, which makes every fetch scan the whole header
//! table per record (fetches stop answering in time beyond some ten thousand records with
//! headers); [`Tansu::start`] adds that index (`kafka_bench.py index`) once the broker runs. What arrived is read with the
//! independent Python client (`tests/peers/kafka_consume.py`, confluent-kafka).
//! Used as `crate::common::kafka` next to `common::python`.

/// Tests that start a tansu broker hold this guard: one broker at a time in the test binary,
/// so the timing of each (the kill -9 and budget tests measure progress over time) does not
/// depend on another broker test running beside it on a 2-core machine.
pub fn one_broker_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static BROKER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BROKER.lock().unwrap_or_else(|e| e.into_inner())
}

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn required() -> bool {
    std::env::var_os("OUTPOST_REQUIRE_PEERS").is_some_and(|v| !v.is_empty())
}

/// The tansu binary, or `None` (reason printed) when the test should skip.
pub fn tansu_binary(test: &str) -> Option<PathBuf> {
    let path = match std::env::var_os("OUTPOST_TANSU").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("OUTPOST_CACHE_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/outpost"))
                })
                .unwrap_or_else(|| PathBuf::from("/nonexistent"));
            cache.join("tansu/bin/tansu")
        }
    };
    if path.exists() {
        return Some(path);
    }
    if required() {
        panic!(
            "{test}: OUTPOST_REQUIRE_PEERS is set but the tansu broker is missing at {}; \
             run tests/run.sh, which builds it",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: the tansu broker is not at {} (tests/run.sh builds it; OUTPOST_TANSU \
         overrides the path)",
        path.display()
    );
    None
}

/// A tansu broker on 127.0.0.1; killed on drop.
pub struct Tansu {
    bin: PathBuf,
    python: PathBuf,
    dir: PathBuf,
    pub port: u16,
    /// The port clients are told to connect to (a proxy in front of the broker), if not `port`.
    advertised: u16,
    child: Option<Child>,
}

impl std::fmt::Debug for Tansu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tansu").field("port", &self.port).finish()
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl Tansu {
    /// Starts a broker keeping its data in `dir` and waits until it accepts connections.
    pub fn start(bin: &Path, python: &Path, dir: &Path, port: u16) -> Tansu {
        Tansu::start_advertising(bin, python, dir, port, port)
    }

    /// Like [`Tansu::start`], but clients are told (in metadata) to connect to `advertised`,
    /// where the test runs a proxy to the broker's `port`.
    pub fn start_advertising(
        bin: &Path,
        python: &Path,
        dir: &Path,
        port: u16,
        advertised: u16,
    ) -> Tansu {
        std::fs::create_dir_all(dir).unwrap();
        let mut t = Tansu {
            bin: bin.to_path_buf(),
            python: python.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
            advertised,
            child: None,
        };
        t.restart();
        t
    }

    /// The bootstrap address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Starts the broker again (after [`Tansu::stop`]) on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let log = std::fs::File::create(self.dir.join("tansu.log")).unwrap();
        let child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(["broker", "--listener-url"])
            .arg(self.url())
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.advertised))
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listening(self.port) {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = Command::new(&self.python)
            .arg(peer_script("kafka_bench.py"))
            .args(["index", "--db"])
            .arg(self.dir.join("tansu.db"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "indexing tansu's header table failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the broker (SIGKILL) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while listening(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(["topic", "create", "--broker"])
            .arg(self.url())
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tansu topic create {name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = log
                .chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("--- tansu log (tail) ---\n{tail}");
        }
        self.stop();
    }
}

fn peer_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/peers")
        .join(name)
}

/// The (low, high) watermarks of partition 0 of each topic, from the independent client.
pub fn watermarks(
    python: &Path,
    brokers: &str,
    topics: &[&str],
) -> std::collections::BTreeMap<String, (i64, i64)> {
    let out = Command::new(python)
        .arg(peer_script("kafka_bench.py"))
        .args([
            "watermarks",
            "--brokers",
            brokers,
            "--topics",
            &topics.join(","),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka_bench.py watermarks failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
    let v: std::collections::BTreeMap<String, (i64, i64)> = serde_json::from_str(line).unwrap();
    v
}

/// One record as `kafka_consume.py` prints it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Arrived {
    pub topic: String,
    /// Not asserted (the tests' topics have one partition); shown in failure messages.
    #[allow(dead_code)]
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: std::collections::BTreeMap<String, Option<String>>,
}

/// Reads `topics` from the beginning with the independent client until `expect` records
/// arrived or nothing new came for `idle_s` seconds.
pub fn consume(
    python: &Path,
    brokers: &str,
    topics: &[&str],
    expect: usize,
    idle_s: u32,
) -> Vec<Arrived> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/kafka_consume.py");
    let out = Command::new(python)
        .arg(script)
        .args(["--brokers", brokers, "--topics", &topics.join(",")])
        .args([
            "--expect",
            &expect.to_string(),
            "--idle",
            &idle_s.to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        eprintln!("kafka_consume.py stderr:\n{stderr}");
    }
    eprintln!(
        "kafka_consume.py: {}",
        stdout.lines().last().unwrap_or("no output")
    );
    assert!(
        out.status.success() && stdout.lines().any(|l| l.starts_with("DONE ")),
        "kafka_consume.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Produces `count` records (key `k<i>`, value `{"i":i,"card_id":"c<i>"}`) to `topic`.
pub fn produce(python: &Path, brokers: &str, topic: &str, start: usize, count: usize) {
    produce_values(python, brokers, topic, start, count, None);
}

/// Like [`produce`], with each value made from `template` (`{i}` = the record's index).
pub fn produce_values(
    python: &Path,
    brokers: &str,
    topic: &str,
    start: usize,
    count: usize,
    template: Option<&str>,
) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/kafka_produce.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--brokers", brokers, "--topic", topic])
        .args(["--count", &count.to_string(), "--start", &start.to_string()]);
    if let Some(template) = template {
        cmd.args(["--value", template]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "kafka_produce.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
