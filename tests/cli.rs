//! The `outpost` binary end to end: config commands, `run` with flags and environment
//! overrides, the client commands against it, and a clean SIGTERM shutdown.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn outpost() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    for var in [
        "OUTPOST_DATA_DIR",
        "OUTPOST_LISTEN",
        "OUTPOST_EDGE_ID",
        "OUTPOST_STORE_ID",
        "OUTPOST_SERVER",
        "OUTPOST_TOKEN",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn run_with_input(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_example_output_passes_config_check() {
    let out = outpost().args(["config", "example"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("[http]"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outpost.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = outpost()
        .arg("config")
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert_eq!(text(&check.stdout), format!("{}: ok\n", file.display()));
}

#[test]
fn a_bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (content, needle) in [
        ("[http]\nlisten = \"everywhere\"\n", "http.listen"),
        ("[http]\nmax_body_bytes = 1\n", "http.max_body_bytes"),
        ("[edge]\nstore = \"x\"\n", "store"),
        ("[http]\nlisten = 8080\n", "line 2"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, content).unwrap();
        let check = outpost()
            .arg("config")
            .arg("check")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(check.status.code(), Some(2), "{content}");
        let stderr = text(&check.stderr);
        assert!(stderr.contains(needle), "{content}: {stderr}");
        assert!(stderr.contains("bad.toml"), "{stderr}");

        let run = outpost()
            .arg("run")
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert_eq!(
            run.status.code(),
            Some(2),
            "{content}: {}",
            text(&run.stderr)
        );
        assert!(text(&run.stderr).contains(needle), "{}", text(&run.stderr));
    }
    assert!(
        !dir.path().join("data").exists(),
        "a bad config touches no data"
    );
}

#[test]
fn a_bad_environment_override_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let run = outpost()
        .arg("run")
        .arg("--data-dir")
        .arg(dir.path())
        .env("OUTPOST_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let stderr = text(&run.stderr);
    assert!(
        stderr.contains("http.listen") && stderr.contains("OUTPOST_LISTEN"),
        "{stderr}"
    );
}

#[test]
fn client_commands_against_no_server_exit_1_and_say_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = outpost()
        .args(["topics", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach Outpost"),
        "{}",
        text(&out.stderr)
    );
}

/// A running `outpost run` whose stderr is drained by a thread.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    url: String,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// [`Server::start`] with more arguments for `outpost run` (`--config FILE`).
    fn start_with(data_dir: &Path, args: &[&std::ffi::OsStr]) -> Server {
        let mut child = outpost()
            .args(["run", "--log-level", "info", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("OUTPOST_LISTEN", "127.0.0.1:0")
            // Not the default 1883, which another box on the machine may hold.
            .env(
                "OUTPOST_MQTT_LISTEN",
                format!("127.0.0.1:{}", crate::common::python::free_port()),
            )
            // Not the default 9092, which another box on the machine may hold.
            .env("OUTPOST_KAFKA_LISTEN", "127.0.0.1:0")
            .env("OUTPOST_EDGE_ID", "edge-cli-test")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[outpost run] {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let listen = loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("`outpost run` logs its listen address within 60 s");
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("listen="))
            {
                break addr.to_string();
            }
        };
        Server {
            child,
            lines,
            url: format!("http://{listen}"),
        }
    }

    fn client(&self, args: &[&str]) -> Command {
        let mut cmd = outpost();
        cmd.args(args).env("OUTPOST_SERVER", &self.url);
        cmd
    }

    /// Sends SIGTERM and returns the exit code and the rest of stderr.
    fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid we spawned and still own; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "`outpost run` did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // The drain thread ends at EOF, which follows the exit.
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            rest.push(line);
        }
        (status.code(), rest.join("\n"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn run_produce_tail_topics_status_then_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));

    let produced = run_with_input(
        &mut server.client(&["produce", "store.events", "--key", "till-1"]),
        "{\"amount\": 12.5}\nhello world\n\n42\n",
    );
    assert!(produced.status.success(), "{}", text(&produced.stderr));
    assert_eq!(
        text(&produced.stdout),
        "produced 3 records to store.events at offsets 0..=2\n"
    );

    let tail = server.client(&["tail", "store.events"]).output().unwrap();
    assert!(tail.status.success(), "{}", text(&tail.stderr));
    let records = json_lines(&tail);
    assert_eq!(records.len(), 3, "{}", text(&tail.stdout));
    assert_eq!(records[0]["value"], json!({"amount": 12.5}));
    assert_eq!(records[0]["key"], "till-1");
    assert_eq!(records[1]["value"], "hello world");
    assert_eq!(records[2]["value"], 42);
    assert_eq!(records[2]["offset"], 2);

    let tail = server
        .client(&["tail", "store.events", "--from", "1", "--limit", "1"])
        .output()
        .unwrap();
    let records = json_lines(&tail);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["offset"], 1);

    // A following tail gets a record produced after it started, then stops at its limit.
    let follower = server
        .client(&[
            "tail",
            "store.events",
            "--from",
            "3",
            "--follow",
            "--limit",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let late = run_with_input(
        &mut server.client(&["produce", "store.events"]),
        "{\"late\":true}\n",
    );
    assert!(late.status.success(), "{}", text(&late.stderr));
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success(), "{}", text(&followed.stderr));
    let records = json_lines(&followed);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["value"], json!({"late": true}));

    let topics = server.client(&["topics"]).output().unwrap();
    assert!(topics.status.success(), "{}", text(&topics.stderr));
    let table = text(&topics.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("store.events"))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..4], ["0", "4", "4"], "{table}");

    let status = server.client(&["status"]).output().unwrap();
    let status = text(&status.stdout);
    assert!(status.contains("status:   ok"), "{status}");
    assert!(status.contains("edge id:  edge-cli-test"), "{status}");
    // The bundled plugins' runners create their (empty) input topics, so only the record
    // count is exact here.
    assert!(status.contains("(4 records stored"), "{status}");

    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
}

#[test]
fn a_second_run_on_a_busy_port_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = outpost()
        .arg("run")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--listen")
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot listen on"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn on_a_full_disk_produce_is_507_tail_still_reads_and_sigterm_exits_0() {
    let Some(small) = crate::log_disk_full::SmallFs::mount("16m") else {
        return;
    };
    // No disk budget: the file system itself fills up.
    let config = small.mnt.join("outpost.toml");
    std::fs::write(&config, "[log]\nmin_free_bytes = 0\n").unwrap();
    let server = Server::start_with(
        &small.mnt.join("data"),
        &["--config".as_ref(), config.as_os_str()],
    );
    let produced = run_with_input(
        &mut server.client(&["produce", "store.events"]),
        "{\"before\":1}\n{\"before\":2}\n",
    );
    assert!(produced.status.success(), "{}", text(&produced.stderr));

    crate::log_disk_full::fill_with_ballast(&small.mnt.join("ballast"));
    let refused = run_with_input(
        &mut server.client(&["produce", "store.events"]),
        &format!("{{\"pad\":\"{}\"}}\n", "x".repeat(20_000)),
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("507"),
        "{}",
        text(&refused.stderr)
    );

    let tail = server.client(&["tail", "store.events"]).output().unwrap();
    assert!(tail.status.success(), "{}", text(&tail.stderr));
    let records = json_lines(&tail);
    assert_eq!(records.len(), 2, "{}", text(&tail.stdout));

    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "a clean stop on a full disk: {stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
}

#[test]
fn a_box_on_a_disk_with_0_bytes_free_starts_serves_what_it_holds_and_takes_records_once_space_returns(
) {
    let Some(small) = crate::log_disk_full::SmallFs::mount("96m") else {
        return;
    };
    let config = small.mnt.join("outpost.toml");
    std::fs::write(&config, "[log]\nmin_free_bytes = 0\n").unwrap();
    let data = small.mnt.join("data");
    let args = ["--config".as_ref(), config.as_os_str()];
    {
        let server = Server::start_with(&data, &args);
        let produced = run_with_input(
            &mut server.client(&["produce", "store.events"]),
            "{\"before\":1}\n{\"before\":2}\n",
        );
        assert!(produced.status.success(), "{}", text(&produced.stderr));
        assert_eq!(server.terminate().0, Some(0));
    }
    assert!(
        data.join("ballast").is_file(),
        "the first start reserved the ballast"
    );
    let filler = small.mnt.join("filler");
    crate::log_disk_full::fill_with_ballast(&filler);
    {
        // To the last byte: 0 bytes free.
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&filler)
            .unwrap();
        while f.write_all(&[0xa5]).is_ok() {}
    }

    let server = Server::start_with(&data, &args);
    assert!(
        !data.join("ballast").exists(),
        "the start released the ballast to open the state store"
    );
    let tail = server.client(&["tail", "store.events"]).output().unwrap();
    assert_eq!(json_lines(&tail).len(), 2, "{}", text(&tail.stderr));
    let pad = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(40_000));
    let refused = run_with_input(&mut server.client(&["produce", "store.events"]), &pad);
    assert!(
        text(&refused.stderr).contains("507"),
        "{}",
        text(&refused.stderr)
    );

    std::fs::remove_file(&filler).unwrap();
    // The log asks the kernel for free space at most once a second: appends resume by
    // themselves within that.
    let again = crate::common::wait::wait_until(
        Duration::from_secs(20),
        || run_with_input(&mut server.client(&["produce", "store.events"]), &pad),
        |out| out.status.success(),
    );
    assert!(again.is_ok(), "appends did not resume once space returned");
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn tail_names_a_lost_range_on_stderr_and_goes_on_after_it() {
    use outpost::log::{FsyncPolicy, Log, LogConfig, NamedFsync, NewRecord, TopicConfig};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = LogConfig {
        min_free_bytes: 0,
        default_topic: TopicConfig {
            fsync: FsyncPolicy::Named(NamedFsync::Never),
            segment_bytes: 4096,
            ..TopicConfig::default()
        },
        ..LogConfig::default()
    };
    // The box's identity first, as a box that wrote this log would have it (a log with data
    // and no state store is refused as damage).
    drop(outpost::state::open_box(&data, &outpost::state::BoxOptions::default()).unwrap());
    {
        let log = Log::open(&data.join("log"), config).unwrap();
        let t = log.topic_or_create("store.events").unwrap();
        for i in 0..40 {
            let value = json!({ "i": i, "pad": "x".repeat(300) }).to_string();
            t.append(vec![NewRecord {
                value: value.into_bytes(),
                ..NewRecord::default()
            }])
            .unwrap();
        }
        log.close().unwrap();
    }
    let topic_dir = data.join("log").join("store.events");
    let mut bases: Vec<u64> = std::fs::read_dir(&topic_dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").map(|b| b.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    assert!(bases.len() >= 3, "{bases:?}");
    std::fs::remove_file(topic_dir.join(format!("{:020}.log", bases[1]))).unwrap();

    let server = Server::start(&data);
    let tail = server.client(&["tail", "store.events"]).output().unwrap();
    assert!(tail.status.success(), "{}", text(&tail.stderr));
    let offsets: Vec<u64> = json_lines(&tail)
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..40)
        .filter(|o| !(bases[1]..bases[2]).contains(o))
        .collect();
    assert_eq!(offsets, expected);
    let stderr = text(&tail.stderr);
    assert!(
        stderr.contains(&format!("{}..{}", bases[1], bases[2])),
        "the range is named: {stderr}"
    );
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}
