//! Real peers for the MQTT integration tests: mosquitto (Debian) as an external broker, plain
//! or TLS, that can be killed and started again on its port; a private CA with server and
//! client certificates made by the `openssl` command; and `outpost run` as a child process that
//! can be killed with SIGKILL and started again on the same data directory and ports.
//!
//! When mosquitto or openssl is missing a test skips with a printed reason, unless
//! `OUTPOST_REQUIRE_PEERS` is set (CI, `tests/run.sh`), where it fails instead. Python peers
//! (paho-mqtt) come from `common/python.rs`. Used as `crate::common::peers`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

fn required() -> bool {
    std::env::var_os("OUTPOST_REQUIRE_PEERS").is_some_and(|v| !v.is_empty())
}

/// Finds a program in PATH or in the given fallback directories.
fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(fallbacks.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The mosquitto and openssl programs, or `None` (with the reason printed) when the test
/// should skip. Panics when `OUTPOST_REQUIRE_PEERS` is set and one is missing.
pub fn broker_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    let mosquitto = find_program("mosquitto", &["/usr/sbin", "/usr/local/sbin"]);
    let openssl = find_program("openssl", &["/usr/bin"]);
    match (mosquitto, openssl) {
        (Some(m), Some(o)) => Some((m, o)),
        (m, _) => {
            let missing = if m.is_none() { "mosquitto" } else { "openssl" };
            if required() {
                panic!("{test}: OUTPOST_REQUIRE_PEERS is set but `{missing}` is not installed; run tests/run.sh");
            }
            eprintln!("SKIPPED {test}: `{missing}` is not installed (tests/run.sh installs it)");
            None
        }
    }
}

/// PEM files of a private CA, a server certificate for `localhost`/127.0.0.1 and a client
/// certificate, all made by the `openssl` command in `dir`.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(bin: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// Makes the CA and both certificates (EC P-256, valid two days).
    pub fn generate(openssl_bin: &Path, dir: &Path) -> Certs {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca_args = vec!["req", "-x509"];
        ca_args.extend(ec);
        ca_args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Outpost Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(openssl_bin, dir, &ca_args);
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
            ),
            (
                "client",
                "outpost-test-client",
                "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
            ),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let (key, csr, pem, extfile) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            let subj = format!("/CN={cn}");
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(openssl_bin, dir, &req);
            openssl(
                openssl_bin,
                dir,
                &[
                    "x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", &pem, "-days", "2", "-extfile", &extfile,
                ],
            );
        }
        Certs {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A mosquitto broker on 127.0.0.1:`port`, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    bin: PathBuf,
    conf: PathBuf,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Mosquitto {
    /// Writes a config into `dir` and starts the broker. With `certs`, the listener speaks TLS
    /// and requires a client certificate signed by the CA. Persistent sessions queue without
    /// limit, so nothing published while Outpost is away is dropped by the broker.
    pub fn start(bin: &Path, dir: &Path, port: u16, certs: Option<&Certs>) -> Mosquitto {
        Mosquitto::start_with(bin, dir, port, certs, None)
    }

    /// [`Mosquitto::start`] without TLS that admits only `user` with its password (made into a
    /// password file by `mosquitto_passwd`) and refuses anonymous clients.
    pub fn start_with_user(bin: &Path, dir: &Path, port: u16, user: (&str, &str)) -> Mosquitto {
        Mosquitto::start_with(bin, dir, port, None, Some(user))
    }

    fn start_with(
        bin: &Path,
        dir: &Path,
        port: u16,
        certs: Option<&Certs>,
        user: Option<(&str, &str)>,
    ) -> Mosquitto {
        let anonymous = user.is_none();
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous {anonymous}\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages 20\nlog_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\n"
        );
        if let Some((name, password)) = user {
            let file = dir.join(format!("mosquitto-{port}.passwd"));
            let tool = bin.with_file_name("mosquitto_passwd");
            let tool = if tool.exists() {
                tool
            } else {
                PathBuf::from("mosquitto_passwd")
            };
            let out = Command::new(&tool)
                .args(["-c", "-b"])
                .arg(&file)
                .args([name, password])
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
            assert!(
                out.status.success(),
                "mosquitto_passwd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            conf.push_str(&format!("password_file {}\n", file.display()));
        }
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // As root mosquitto would switch to the `mosquitto` user, which cannot read the
            // test's private temporary directory.
            conf.push_str("user root\n");
        }
        if let Some(c) = certs {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                c.ca.display(),
                c.server_cert.display(),
                c.server_key.display()
            ));
        }
        let path = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(&path, conf).unwrap();
        let mut m = Mosquitto {
            bin: bin.to_path_buf(),
            conf: path,
            port,
            child: None,
            log: dir.join(format!("mosquitto-{port}.log")),
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {} within 20 s: {}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and config.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// What the broker logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- mosquitto log ---\n{}", self.log_text());
        }
        self.kill();
    }
}

/// `GET path` on 127.0.0.1:`port`, returning the status code and the body as JSON.
pub fn http_get(port: u16, path: &str) -> Option<(u16, Value)> {
    http_exchange(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: outpost\r\nConnection: close\r\n\r\n"),
    )
}

/// `GET path`: the status code and the body as the box sent it, or `None` when the box did
/// not answer.
pub fn http_get_text(port: u16, path: &str) -> Option<(u16, String)> {
    http_exchange_text(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: outpost\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends one whole request (with `Connection: close`) to 127.0.0.1:`port`; the status code
/// and the body as JSON (`null` when it is not JSON), or `None` when the box did not answer.
fn http_exchange(port: u16, request: &str) -> Option<(u16, Value)> {
    let (code, body) = http_exchange_text(port, request)?;
    Some((code, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// [`http_exchange`] with the body as text.
fn http_exchange_text(port: u16, request: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// `POST path` with a JSON body, returning the status code.
pub fn http_post(port: u16, path: &str, content_type: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: outpost\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `POST /topics/{topic}` with a JSON body; the status and the parsed answer, or `None` when
/// the box did not answer (it was killed).
pub fn http_produce(port: u16, topic: &str, body: &str) -> Option<(u16, Value)> {
    http_exchange(
        port,
        &format!(
            "POST /topics/{topic} HTTP/1.1\r\nHost: outpost\r\nConnection: close\r\n\
             Content-Type: application/vnd.kafka.json.v2+json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// `outpost run` as a child process on fixed HTTP and MQTT ports, so it can be killed and
/// started again with the same addresses. Its stderr is kept and shown when a test fails.
#[derive(Debug)]
pub struct Outpost {
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub http_port: u16,
    pub mqtt_port: u16,
    /// The Kafka listener's port (a free one, kept across restarts).
    pub kafka_port: u16,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    starts: u32,
    /// The endpoint whose 200 means started (`/ready` or `/health`).
    up: &'static str,
}

impl Outpost {
    /// Starts `outpost run` and waits until `/ready` answers 200 (the log is open, the
    /// listeners are bound, every enabled plugin is running or has failed visibly).
    pub fn start(
        data_dir: &Path,
        config: Option<&Path>,
        http_port: u16,
        mqtt_port: u16,
    ) -> Outpost {
        Outpost::start_until(data_dir, config, http_port, mqtt_port, "/ready")
    }

    /// Starts `outpost run` and waits only until `/health` answers (alive, maybe not ready).
    pub fn start_alive(
        data_dir: &Path,
        config: Option<&Path>,
        http_port: u16,
        mqtt_port: u16,
    ) -> Outpost {
        Outpost::start_until(data_dir, config, http_port, mqtt_port, "/health")
    }

    fn start_until(
        data_dir: &Path,
        config: Option<&Path>,
        http_port: u16,
        mqtt_port: u16,
        up: &'static str,
    ) -> Outpost {
        let mut o = Outpost {
            up,
            data_dir: data_dir.to_path_buf(),
            config: config.map(Path::to_path_buf),
            http_port,
            mqtt_port,
            kafka_port: super::python::free_port(),
            child: None,
            stderr: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
        };
        o.spawn();
        o
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(["run", "--log-level", "info,rumqttd=warn", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.http_port));
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        for var in [
            "OUTPOST_DATA_DIR",
            "OUTPOST_LISTEN",
            "OUTPOST_KAFKA_BROKERS",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .env(
                "OUTPOST_MQTT_LISTEN",
                format!("127.0.0.1:{}", self.mqtt_port),
            )
            // Not the default 9092, which another box on the machine may hold.
            .env(
                "OUTPOST_KAFKA_LISTEN",
                format!("127.0.0.1:{}", self.kafka_port),
            )
            .env("OUTPOST_EDGE_ID", "edge-mqtt-test")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&self.stderr);
        let start = self.starts;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(format!("[run {start}] {line}"));
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some((200, _)) = http_get(self.http_port, self.up) {
                break;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "`outpost run` exited with {status} at start:\n{}",
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`outpost run` did not answer {} with 200 within 90 s:\n{}",
                self.up,
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The process id of the running child (for /proc/PID/status).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data directory, config and ports (and waits as `start` did).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on a child we spawned and have not reaped; no memory involved.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process (all its runs) wrote to stderr.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The Kafka bootstrap address of this box.
    pub fn kafka_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// Runs the client command `outpost <args>` against this box; its stdout (panics when it
    /// fails).
    pub fn client(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(args)
            .env(
                "OUTPOST_SERVER",
                format!("http://127.0.0.1:{}", self.http_port),
            )
            .env_remove("OUTPOST_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "outpost {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `GET path` as JSON; panics on a transport error or a status other than 200.
    pub fn get(&self, path: &str) -> Value {
        match http_get(self.http_port, path) {
            Some((200, v)) => v,
            other => panic!("GET {path}: {other:?}"),
        }
    }

    /// The named source (or sink) from `/topics`.
    pub fn status(&self, list: &str, name: &str) -> Option<Value> {
        self.get("/topics")[list]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    /// Every record of a topic (none when it does not exist).
    pub fn records(&self, topic: &str) -> Vec<Value> {
        self.records_from(topic, 0)
    }

    /// Every record of a topic from offset `from` on (none when it does not exist).
    pub fn records_from(&self, topic: &str, from: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut offset = from;
        loop {
            let Some((code, page)) = http_get(
                self.http_port,
                &format!("/topics/{topic}/records?offset={offset}&limit=1000"),
            ) else {
                panic!("fetching {topic} failed");
            };
            if code == 404 {
                return out;
            }
            assert_eq!(code, 200, "{page}");
            let records = page["records"].as_array().cloned().unwrap_or_default();
            let next = page["next_offset"].as_u64().unwrap();
            if records.is_empty() {
                return out;
            }
            out.extend(records);
            offset = next;
        }
    }

    /// Waits until `pred` holds for the records of `topic`; returns them.
    pub fn wait_records(
        &self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records(topic);
            if pred(&records) || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Outpost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.stderr_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "--- outpost stderr (last {} lines) ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
        self.kill9();
    }
}

/// Waits until `pred` is true; false on timeout. (`common::wait::wait_until` when the failure
/// message should show the last value observed.)
pub fn eventually(timeout: Duration, pred: impl FnMut() -> bool) -> bool {
    super::wait::wait_until(timeout, pred, |ok| *ok).is_ok()
}

/// A small deterministic random number generator (xorshift), seeded from the clock and
/// printed, so a failing run can be repeated with `OUTPOST_TEST_SEED`.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_clock(test: &str) -> Rng {
        let seed = std::env::var("OUTPOST_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: OUTPOST_TEST_SEED={seed}");
        Rng(seed | 1)
    }
    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}
