//! Store-and-forward and mirroring against a real Kafka-compatible broker (tansu), checked with
//! an independent client (Python confluent-kafka). Skips with a printed reason when tansu or the
//! Python venv is missing, unless `OUTPOST_REQUIRE_PEERS` is set.
//!
//! Covered: no fault (100k records over a critical, a normal and a bulk topic: complete, in
//! order per topic, once, with headers); a broker outage under ingest (nothing lost, critical
//! before bulk); `kill -9` of `outpost run` mid-drain (resumes from the durable cursor, nothing
//! lost, duplicates recognised by headers, the broker's ListOffsets count agreeing); a budget
//! on an uplink measured by a byte-counting loopback proxy (within 10 %); mirroring.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{kafka, python};

use outpost::forward::{Class, ForwardConfig, ForwardStatus, Forwarder};
use outpost::log::{Log, LogConfig, NewRecord};
use outpost::mirror::{MirrorConfig, MirrorTopic};
use outpost::state::StateStore;

use kafka::{Arrived, Tansu};

const EDGE: &str = "edge-fwd";
const STORE: &str = "store-42";

/// The tansu peers of these tests run one at a time (with those of the other modules), to keep
/// the timing of each (the kill -9 and budget tests measure progress over time) independent of
/// the others on a 2-core machine. (Fetches that answered nothing in time were tansu 0.6's
/// missing header index, which `Tansu::start` now adds; see tests/common/kafka.rs.)
fn serial() -> std::sync::MutexGuard<'static, ()> {
    kafka::one_broker_at_a_time()
}

fn peers(test: &str) -> Option<(PathBuf, PathBuf)> {
    let tansu = kafka::tansu_binary(test)?;
    let python = python::python(test)?;
    Some((python, tansu))
}

fn forward_config(brokers: &str) -> ForwardConfig {
    let mut c = ForwardConfig::default();
    c.kafka.brokers = brokers.to_string();
    c.kafka.delivery_timeout_ms = 3000;
    c.backoff_initial_ms = 100;
    c.backoff_max_ms = 1000;
    c
}

fn append_json(log: &Log, topic: &str, from: usize, count: usize) {
    let t = log.topic_or_create(topic).unwrap();
    let mut i = from;
    while i < from + count {
        let n = 1000.min(from + count - i);
        let records = (i..i + n)
            .map(|j| NewRecord {
                key: Some(format!("key-{j}").into_bytes()),
                value: format!(r#"{{"i":{j},"topic":"{topic}"}}"#).into_bytes(),
                ..NewRecord::default()
            })
            .collect();
        t.append(records).unwrap();
        i += n;
    }
}

/// A forwarder running on its own runtime until dropped.
struct Running {
    forwarder: Forwarder,
    stop: outpost::kernel::ShutdownTrigger,
    runtime: Option<tokio::runtime::Runtime>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn start(log: &Log, state: &StateStore, config: ForwardConfig) -> Running {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ctx = outpost::kernel::Context::new(
            std::path::Path::new("."),
            log.clone(),
            state.clone(),
            outpost::kernel::Identity::new(EDGE, STORE),
            outpost::kernel::Shutdown::never(),
        );
        let forwarder = Forwarder::new(&ctx, config);
        log.add_retention_guard(std::sync::Arc::new(forwarder.clone()));
        let (stop, rx) = outpost::kernel::Shutdown::new();
        let f = forwarder.clone();
        let task = runtime.spawn(async move {
            f.run(rx).await.unwrap();
        });
        Running {
            forwarder,
            stop,
            runtime: Some(runtime),
            task: Some(task),
        }
    }

    fn status(&self) -> ForwardStatus {
        self.forwarder.status().unwrap()
    }

    fn debt(&self, class: Class) -> u64 {
        self.status()
            .classes
            .get(&class)
            .map_or(0, |c| c.debt_records)
    }

    /// Waits until no forwarded topic has debt.
    fn wait_caught_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if s.topics.iter().all(|t| t.debt_records == 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "forwarding did not catch up: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.request();
        if let (Some(rt), Some(task)) = (self.runtime.take(), self.task.take()) {
            let _ =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(15), task).await });
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Checks that `arrived` holds, for each (topic, count), records 0..count exactly once after
/// dropping duplicates recognised by the `outpost-topic`/`outpost-offset` headers, in order of
/// the local offset, each with the four headers. Returns how many duplicates there were.
fn check_arrived(arrived: &[Arrived], expected: &[(&str, usize)]) -> usize {
    let mut by_topic: BTreeMap<String, Vec<&Arrived>> = BTreeMap::new();
    for a in arrived {
        by_topic.entry(a.topic.clone()).or_default().push(a);
    }
    let mut duplicates = 0;
    for (topic, count) in expected {
        let records = by_topic.get(*topic).map(Vec::as_slice).unwrap_or(&[]);
        let mut seen = BTreeSet::new();
        let mut last_local = None;
        for r in records {
            let h = |name: &str| r.headers.get(name).cloned().flatten();
            assert_eq!(h("outpost-edge").as_deref(), Some(EDGE), "{r:?}");
            assert_eq!(h("outpost-store").as_deref(), Some(STORE), "{r:?}");
            assert_eq!(h("outpost-topic").as_deref(), Some(*topic), "{r:?}");
            let local: u64 = h("outpost-offset").unwrap().parse().unwrap();
            let value: serde_json::Value =
                serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(
                value["i"].as_u64(),
                Some(local),
                "value and offset header disagree: {r:?}"
            );
            assert_eq!(r.key.as_deref(), Some(format!("key-{local}").as_str()));
            if !seen.insert(local) {
                duplicates += 1;
                continue;
            }
            // A first sighting is always the next local offset: order is kept.
            assert_eq!(
                local,
                last_local.map_or(0, |l: u64| l + 1),
                "{topic}: out of order at broker offset {}",
                r.offset
            );
            last_local = Some(local);
        }
        assert_eq!(seen.len(), *count, "{topic}: records missing");
    }
    duplicates
}

fn broker_with_topics(tansu: &Path, python: &Path, dir: &Path, topics: &[&str]) -> Tansu {
    let broker = Tansu::start(tansu, python, &dir.join("tansu"), python::free_port());
    for t in topics {
        broker.create_topic(t, 1);
    }
    broker
}

#[test]
fn records_of_every_class_arrive_complete_in_order_and_once_with_their_headers() {
    let _serial = serial();
    let Some((python, tansu)) = peers("forward no-fault") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 100k records; tansu serves fetches of this many only with the header index that
    // `Tansu::start` adds (see tests/common/kafka.rs).
    let topics = [
        ("pos.payments", 40_000),
        ("fraud.scores", 30_000),
        ("pos.baskets", 30_000),
    ];
    let names: Vec<&str> = topics.iter().map(|t| t.0).collect();
    let broker = broker_with_topics(&tansu, &python, dir.path(), &names);
    let log = Log::open(&dir.path().join("log"), LogConfig::default()).unwrap();
    let state = StateStore::open(&dir.path().join("state")).unwrap();
    for (t, n) in topics {
        append_json(&log, t, 0, n);
    }
    // Not forwarded by default: raw sensor data.
    append_json(&log, "sensors.fridge", 0, 100);

    let started = Instant::now();
    let running = Running::start(&log, &state, forward_config(&broker.brokers()));
    running.wait_caught_up(Duration::from_secs(300));
    let took = started.elapsed();
    eprintln!(
        "forwarded 100000 records in {:.1} s ({:.0} records/s)",
        took.as_secs_f64(),
        100_000.0 / took.as_secs_f64()
    );
    let status = running.status();
    assert!(status.online);
    assert!(status.topics.iter().all(|t| t.topic != "sensors.fridge"));

    let arrived = kafka::consume(&python, &broker.brokers(), &names, 100_000, 30);
    let duplicates = check_arrived(&arrived, &topics);
    assert_eq!(duplicates, 0, "no fault, so no duplicates");
    assert_eq!(arrived.len(), 100_000);
    // The cursors are in the state store under the forwarder's consumer name.
    for (t, n) in topics {
        assert_eq!(state.offset("forward:cloud", t).unwrap(), Some(n as u64));
    }
}

#[test]
fn a_broker_outage_under_ingest_loses_nothing_and_critical_drains_before_bulk() {
    let _serial = serial();
    let Some((python, tansu)) = peers("forward outage") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let names = ["pos.payments", "fraud.scores", "pos.baskets"];
    let mut broker = broker_with_topics(&tansu, &python, dir.path(), &names);
    let log = Log::open(&dir.path().join("log"), LogConfig::default()).unwrap();
    let state = StateStore::open(&dir.path().join("state")).unwrap();
    let mut config = forward_config(&broker.brokers());
    config.batch_records = 200;
    let running = Running::start(&log, &state, config);

    let mut counts = BTreeMap::from([
        ("pos.payments", 0usize),
        ("fraud.scores", 0),
        ("pos.baskets", 0),
    ]);
    let mut ingest = |log: &Log, n_critical: usize, n_normal: usize, n_bulk: usize| {
        for (t, n) in [
            ("pos.payments", n_critical),
            ("fraud.scores", n_normal),
            ("pos.baskets", n_bulk),
        ] {
            let c = counts.get_mut(t).unwrap();
            append_json(log, t, *c, n);
            *c += n;
        }
    };
    ingest(&log, 200, 200, 200);
    running.wait_caught_up(Duration::from_secs(60));

    broker.stop();
    // Continuous ingest while the cloud is unreachable: a large bulk backlog, and critical and
    // normal data arriving all the time.
    for _ in 0..10 {
        ingest(&log, 100, 50, 500);
        std::thread::sleep(Duration::from_millis(150));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = running.status();
        if !s.online {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the forwarder did not notice the outage: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(s.last_error.is_some());
    let bulk_cursor_before = s
        .topics
        .iter()
        .find(|t| t.topic == "pos.baskets")
        .unwrap()
        .cursor;
    assert!(running.debt(Class::Critical) >= 1_000);

    broker.restart();
    // Sample the cursors: the bulk cursor must not move before critical caught up.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut critical_done_at = None;
    let mut bulk_moved_at = None;
    let mut samples = 0;
    while critical_done_at.is_none() || bulk_moved_at.is_none() {
        assert!(
            Instant::now() < deadline,
            "no catch-up after the outage: {:#?}",
            running.status()
        );
        let s = running.status();
        samples += 1;
        let now = Instant::now();
        if critical_done_at.is_none()
            && s.classes
                .get(&Class::Critical)
                .map_or(0, |c| c.debt_records)
                == 0
        {
            critical_done_at = Some(now);
        }
        let bulk = s.topics.iter().find(|t| t.topic == "pos.baskets").unwrap();
        if bulk_moved_at.is_none() && bulk.cursor > bulk_cursor_before {
            bulk_moved_at = Some(now);
            assert!(
                critical_done_at.is_some(),
                "bulk moved before critical caught up: {s:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(samples > 2);
    running.wait_caught_up(Duration::from_secs(180));

    let expected: Vec<(&str, usize)> = counts.iter().map(|(t, n)| (*t, *n)).collect();
    let total: usize = counts.values().sum();
    let arrived = kafka::consume(&python, &broker.brokers(), &names, 0, 15);
    let duplicates = check_arrived(&arrived, &expected);
    assert_eq!(arrived.len(), total + duplicates);
    eprintln!("outage: {total} records, {duplicates} duplicates recognised by their headers");
}

#[test]
fn cloud_records_are_mirrored_into_a_local_topic_and_resume_after_a_restart() {
    let _serial = serial();
    let Some((python, tansu)) = peers("mirror") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topics(&tansu, &python, dir.path(), &["blocklist"]);
    let log = Log::open(&dir.path().join("log"), LogConfig::default()).unwrap();
    let state = StateStore::open(&dir.path().join("state")).unwrap();
    kafka::produce(&python, &broker.brokers(), "blocklist", 0, 300);

    let mirror = MirrorConfig {
        topics: vec![MirrorTopic {
            cloud: "blocklist".into(),
            local: "ref.blocklist".into(),
        }],
        ..MirrorConfig::default()
    };
    let kafka_cfg = forward_config(&broker.brokers()).kafka;
    let run_until = |expect: u64| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (stop, rx) = outpost::kernel::Shutdown::new();
        let ctx = outpost::kernel::Context::new(
            std::path::Path::new("."),
            log.clone(),
            state.clone(),
            outpost::kernel::Identity::new(EDGE, STORE),
            rx,
        );
        let task = rt.spawn(outpost::mirror::run(ctx, kafka_cfg.clone(), mirror.clone()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while log.topic("ref.blocklist").map_or(0, |t| t.next_offset()) < expect {
            assert!(
                Instant::now() < deadline,
                "mirroring did not reach {expect} records"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The mirror commits to the cloud group asynchronously after the local append: wait
        // until the broker has the commit (what a restart resumes at), then stop cleanly.
        let group = mirror.group.replace("{edge_id}", EDGE);
        let committed = crate::common::wait::wait_until(
            Duration::from_secs(60),
            || committed_offset(&broker.brokers(), &group, "blocklist"),
            |c| c.is_some_and(|c| c >= expect as i64),
        );
        assert!(
            committed.is_ok(),
            "the mirror did not commit offset {expect} to its group: {committed:?}"
        );
        stop.request();
        rt.block_on(task).unwrap().unwrap();
    };
    run_until(300);
    kafka::produce(&python, &broker.brokers(), "blocklist", 300, 200);
    run_until(500);

    let t = log.topic("ref.blocklist").unwrap();
    let fetch = t.read(0, 10_000, 64 << 20).unwrap();
    let mut seen = BTreeSet::new();
    for r in &fetch.records {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        let i = v["i"].as_u64().unwrap();
        assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_bytes()));
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == "source" && v == b"cloud"));
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == "outpost-mirror-offset" && *v == i.to_string().into_bytes()));
        seen.insert(i);
    }
    assert_eq!(seen, (0..500).collect::<BTreeSet<u64>>());
    // Resumed from the committed offset: the second run did not start over.
    assert_eq!(fetch.records.len(), 500, "records mirrored twice");
}

/// The offset consumer group `group` committed on partition 0 of the cloud topic `topic` (where
/// the group's next consumer resumes), read from the broker without joining the group.
fn committed_offset(brokers: &str, group: &str, topic: &str) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .ok()?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(5))
        .ok()?;
    match committed.find_partition(topic, 0)?.offset() {
        rdkafka::Offset::Offset(n) => Some(n),
        _ => None,
    }
}

/// `outpost run` as a child process, with its stderr drained.
struct Outpost {
    child: std::process::Child,
    addr: String,
}

impl Outpost {
    fn start(data_dir: &Path, config: &Path, brokers: &str) -> Outpost {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["run", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("OUTPOST_LISTEN", "127.0.0.1:0")
            .env("OUTPOST_KAFKA_BROKERS", brokers)
            .env("OUTPOST_EDGE_ID", EDGE)
            .env("OUTPOST_STORE_ID", STORE)
            .env(
                "OUTPOST_MQTT_LISTEN",
                format!("127.0.0.1:{}", python::free_port()),
            )
            // Not the default 9092, which another box on the machine may hold.
            .env("OUTPOST_KAFKA_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[outpost] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("`outpost run` logs its listen address within 60 s");
            if let Some(a) = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("listen="))
            {
                break a.to_string();
            }
        };
        Outpost { child, addr }
    }

    fn forward_status(&self) -> serde_json::Value {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "GET /forward HTTP/1.1\r\nHost: outpost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn debt(&self, topic: &str) -> (u64, u64) {
        let s = self.forward_status();
        let t = s["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["topic"] == topic)
            .unwrap_or_else(|| panic!("{topic} not in {s}"))
            .clone();
        (
            t["cursor"].as_u64().unwrap(),
            t["debt_records"].as_u64().unwrap(),
        )
    }

    fn kill_nine(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Outpost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kill_nine_during_a_drain_resumes_from_the_cursor_and_loses_nothing() {
    let _serial = serial();
    let Some((python, tansu)) = peers("forward kill -9") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let names = ["pos.payments", "pos.baskets"];
    let broker = broker_with_topics(&tansu, &python, dir.path(), &names);
    let data = dir.path().join("data");
    // The box's identity first, as a box that wrote this log would have it (a log with data
    // and no state store is refused as damage).
    drop(outpost::state::open_box(&data, &outpost::state::BoxOptions::default()).unwrap());
    {
        let log = Log::open(&data.join("log"), LogConfig::default()).unwrap();
        append_json(&log, "pos.payments", 0, 6_000);
        append_json(&log, "pos.baskets", 0, 6_000);
        log.close().unwrap();
    }
    // A budget keeps the drain slow enough to be caught in the middle.
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, "[forward]\nbudget_bytes_per_sec = 250_000\n").unwrap();

    let first = Outpost::start(&data, &config, &broker.brokers());
    let deadline = Instant::now() + Duration::from_secs(120);
    let moved = loop {
        assert!(Instant::now() < deadline, "the drain did not start");
        let (cursor, _) = first.debt("pos.payments");
        if cursor > 0 {
            break cursor;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Cursor commits become durable within the state store's flush interval (500 ms); wait
    // past it so the kill hits a drain whose progress is on disk.
    std::thread::sleep(Duration::from_millis(1500));
    let (cursor_at_kill, debt) = first.debt("pos.payments");
    assert!(debt > 0, "drained before the kill; lower the budget");
    first.kill_nine();

    let second = Outpost::start(&data, &config, &broker.brokers());
    let (resumed_at, _) = second.debt("pos.payments");
    assert!(
        resumed_at >= moved,
        "the restart resumed at {resumed_at}, before the durable cursor {moved}"
    );
    assert!(resumed_at <= 6_000);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (_, a) = second.debt("pos.payments");
        let (_, b) = second.debt("pos.baskets");
        if a == 0 && b == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no catch-up after the restart");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(second);
    eprintln!("kill -9 at cursor {cursor_at_kill}, resumed at {resumed_at}");

    let arrived = kafka::consume(&python, &broker.brokers(), &names, 0, 15);
    let duplicates = check_arrived(&arrived, &[("pos.payments", 6_000), ("pos.baskets", 6_000)]);
    // The broker's own count (ListOffsets) agrees with what the reader saw.
    let marks = kafka::watermarks(&python, &broker.brokers(), &names);
    let stored: i64 = marks.values().map(|(low, high)| high - low).sum();
    assert_eq!(stored as usize, arrived.len(), "{marks:?}");
    eprintln!("kill -9: {duplicates} duplicates, all recognised by their headers");
}

/// When each chunk a client sent passed the proxy, and its size.
type ChunkLog = std::sync::Arc<std::sync::Mutex<Vec<(Instant, usize)>>>;

/// A loopback TCP proxy in front of the broker that timestamps every chunk the clients send
/// (the uplink direction).
struct CountingProxy {
    port: u16,
    sent: ChunkLog,
}

impl CountingProxy {
    fn start(target_port: u16) -> CountingProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream, log: Option<ChunkLog>| {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if let Some(l) = &log {
                                l.lock().unwrap().push((Instant::now(), n));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Some(log.clone()),
                );
                pipe(server, client, None);
            }
        });
        CountingProxy { port, sent }
    }

    /// Bytes the clients sent between `from` and `to`, and the time between the first and
    /// the last of those chunks.
    fn uplink(&self, from: Instant, to: Instant) -> (usize, Duration) {
        let sent = self.sent.lock().unwrap();
        let window: Vec<&(Instant, usize)> = sent
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .collect();
        let bytes = window.iter().map(|(_, n)| n).sum();
        let span = match (window.first(), window.last()) {
            (Some(a), Some(b)) => b.0.duration_since(a.0),
            _ => Duration::ZERO,
        };
        (bytes, span)
    }
}

/// Drains 3 MB of about 1 kB records of `topic` through a byte-counting proxy with `configure`
/// applied to the forwarding config (compression off), checks that everything arrived, and
/// returns the uplink rate in bytes/s over the drain and the window it was measured over.
fn drain_through_counting_proxy(
    test: &str,
    topic: &str,
    configure: impl FnOnce(&mut ForwardConfig),
) -> Option<(f64, Duration)> {
    let _serial = serial();
    let (python, tansu) = peers(test)?;
    let dir = tempfile::tempdir().unwrap();
    // Every client connection, the forwarder's included, goes through the proxy: the broker
    // advertises the proxy's port.
    let broker_port = python::free_port();
    let proxy = CountingProxy::start(broker_port);
    let broker = Tansu::start_advertising(
        &tansu,
        &python,
        &dir.path().join("tansu"),
        broker_port,
        proxy.port,
    );
    broker.create_topic(topic, 1);
    let log = Log::open(&dir.path().join("log"), LogConfig::default()).unwrap();
    let state = StateStore::open(&dir.path().join("state")).unwrap();
    // 3000 records of about 1 kB; large records keep the Kafka protocol's own framing (a few
    // per cent) small next to the bytes the budget counts.
    let records = 3_000usize;
    let t = log.topic_or_create(topic).unwrap();
    let pad = "x".repeat(1000);
    for chunk in (0..records).collect::<Vec<_>>().chunks(500) {
        t.append(
            chunk
                .iter()
                .map(|j| NewRecord {
                    key: Some(format!("key-{j}").into_bytes()),
                    value: format!(r#"{{"i":{j},"pad":"{pad}"}}"#).into_bytes(),
                    ..NewRecord::default()
                })
                .collect(),
        )
        .unwrap();
    }

    let mut config = forward_config(&format!("127.0.0.1:{}", proxy.port));
    config.kafka.compression = "none".into();
    configure(&mut config);
    let started = Instant::now();
    let running = Running::start(&log, &state, config);
    running.wait_caught_up(Duration::from_secs(120));
    let done = Instant::now();
    drop(running);

    let (bytes, span) = proxy.uplink(started, done);
    let marks = kafka::watermarks(&python, &broker.brokers(), &[topic]);
    assert_eq!(marks[topic].1, records as i64, "{marks:?}");
    eprintln!(
        "{test}: {bytes} bytes on the uplink in {:.2} s",
        span.as_secs_f64()
    );
    Some((bytes as f64 / span.as_secs_f64(), span))
}

fn assert_within_ten_percent(rate: f64, span: Duration, budget: u64) {
    eprintln!(
        "budget {budget} B/s, measured {rate:.0} B/s ({:+.1} %) over {:.1} s",
        (rate / budget as f64 - 1.0) * 100.0,
        span.as_secs_f64()
    );
    assert!(
        span > Duration::from_secs(10),
        "the window is too short to judge a rate: {span:?}"
    );
    assert!(
        (rate - budget as f64).abs() <= 0.10 * budget as f64,
        "uplink rate {rate:.0} B/s is not within 10 % of the budget {budget} B/s"
    );
}

#[test]
fn a_throttled_uplink_carries_the_configured_budget_within_ten_percent() {
    let budget = 200_000;
    let Some((rate, span)) =
        drain_through_counting_proxy("forward uplink budget", "pos.payments", |c| {
            c.budget_bytes_per_sec = budget;
        })
    else {
        return;
    };
    assert_within_ten_percent(rate, span, budget);
}

#[test]
fn a_class_budget_below_the_uplink_budget_limits_that_class_within_ten_percent() {
    let budget = 150_000;
    let Some((rate, span)) =
        drain_through_counting_proxy("forward class budget", "pos.baskets", |c| {
            c.budget_bytes_per_sec = 1_000_000;
            c.bulk_bytes_per_sec = budget;
        })
    else {
        return;
    };
    assert_within_ten_percent(rate, span, budget);
}

#[test]
fn the_forward_benchmark_reports_both_rates_and_checks_what_arrived() {
    let _serial = serial();
    let Some((python, tansu)) = peers("forward bench") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args([
            "bench",
            "forward",
            "--records",
            "5000",
            "--repeats",
            "1",
            "--json",
        ])
        .arg("--tansu")
        .arg(&tansu)
        .arg("--python")
        .arg(&python)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "outpost bench forward failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    eprintln!("bench report: {report}");
    let repeat = &report["repeats"][0];
    assert_eq!(repeat["outpost_read_back"], 5000, "{report}");
    assert_eq!(repeat["python_read_back"], 5000, "{report}");
    assert!(report["median_outpost_records_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["median_python_records_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["median_ratio"].as_f64().unwrap() > 0.0);
    // The working directory is removed afterwards.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
